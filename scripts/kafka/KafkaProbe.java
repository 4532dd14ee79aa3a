// Tiny Kafka admin client used by scripts/services.sh: a real metadata round trip to tell
// when the broker is ready (a log line plus an open port is not quite enough), and a topic
// listing for humans. Compiled once by services.sh against the broker's own kafka-clients jar.
//
//   java -cp "<libs>/*:<classes>" KafkaProbe ready  <bootstrap> [timeout_ms]
//   java -cp "<libs>/*:<classes>" KafkaProbe topics <bootstrap>
//   java -cp "<libs>/*:<classes>" KafkaProbe create <bootstrap> <topic> [partitions]
import java.util.List;
import java.util.Properties;
import java.util.TreeSet;
import java.util.concurrent.TimeUnit;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.AdminClientConfig;
import org.apache.kafka.clients.admin.DescribeClusterResult;
import org.apache.kafka.clients.admin.ListTopicsOptions;
import org.apache.kafka.clients.admin.NewTopic;

public final class KafkaProbe {
    public static void main(String[] args) throws Exception {
        if (args.length < 2) {
            System.err.println("usage: KafkaProbe ready <bootstrap> [timeout_ms] | topics <bootstrap> | create <bootstrap> <topic> [partitions]");
            System.exit(2);
        }
        String mode = args[0];
        int timeoutMs = mode.equals("ready") && args.length > 2 ? Integer.parseInt(args[2]) : 10_000;
        Properties p = new Properties();
        p.put(AdminClientConfig.BOOTSTRAP_SERVERS_CONFIG, args[1]);
        p.put(AdminClientConfig.REQUEST_TIMEOUT_MS_CONFIG, timeoutMs);
        p.put(AdminClientConfig.DEFAULT_API_TIMEOUT_MS_CONFIG, timeoutMs);
        p.put(AdminClientConfig.CLIENT_ID_CONFIG, "sluice-services-probe");
        int rc = 0;
        try (Admin admin = Admin.create(p)) {
            switch (mode) {
                case "ready": {
                    DescribeClusterResult c = admin.describeCluster();
                    int nodes = c.nodes().get(timeoutMs, TimeUnit.MILLISECONDS).size();
                    String controller = String.valueOf(c.controller().get(timeoutMs, TimeUnit.MILLISECONDS));
                    // Listing topics goes through the broker's metadata path, which only works
                    // once the broker has caught up with the KRaft metadata log.
                    int topics = admin.listTopics(new ListTopicsOptions().listInternal(true))
                            .names().get(timeoutMs, TimeUnit.MILLISECONDS).size();
                    System.out.println("cluster " + c.clusterId().get() + " nodes=" + nodes
                            + " topics=" + topics + " controller=" + controller);
                    break;
                }
                case "topics":
                    for (String t : new TreeSet<>(admin.listTopics().names().get(timeoutMs, TimeUnit.MILLISECONDS))) {
                        System.out.println(t);
                    }
                    break;
                case "create": {
                    int partitions = args.length > 3 ? Integer.parseInt(args[3]) : 6;
                    admin.createTopics(List.of(new NewTopic(args[2], partitions, (short) 1)))
                            .all().get(timeoutMs, TimeUnit.MILLISECONDS);
                    System.out.println("created " + args[2] + " partitions=" + partitions);
                    break;
                }
                default:
                    System.err.println("unknown mode " + mode);
                    rc = 2;
            }
        } catch (Exception e) {
            System.err.println("kafka probe failed: " + e);
            rc = 1;
        }
        System.exit(rc);
    }
}
