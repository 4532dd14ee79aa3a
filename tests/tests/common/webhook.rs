//! A local webhook receiver: records every delivery and checks its Standard Webhooks
//! signature against the secret it is given.

use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode};

/// One delivery a receiver got.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Its `webhook-id` header ("" when absent).
    pub id: String,
    /// Whether its signature verifies with the receiver's secret.
    pub valid: bool,
    pub headers: HeaderMap,
    pub body: String,
}

/// Every delivery so far, in arrival order.
pub type Deliveries = Arc<Mutex<Vec<Delivery>>>;

/// Starts a receiver on `http://127.0.0.1:<port>/hook` (the returned URL). `answer` gets the
/// number of deliveries so far (1 for the first) and whether this one's signature verified.
pub async fn webhook_receiver(
    secret: &str,
    answer: impl Fn(usize, bool) -> StatusCode + Clone + Send + Sync + 'static,
) -> (String, Deliveries) {
    let got: Deliveries = Arc::default();
    let store = Arc::clone(&got);
    let secret = sluice_schemas::webhook::Secret::parse(secret).expect("a webhook secret");
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let store = Arc::clone(&store);
            let secret = secret.clone();
            let answer = answer.clone();
            async move {
                let h = |name: &str| {
                    headers
                        .get(name)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_string()
                };
                let id = h("webhook-id");
                let valid = sluice_schemas::webhook::verify(
                    &secret,
                    &id,
                    h("webhook-timestamp").parse().unwrap_or(0),
                    &body,
                    &h("webhook-signature"),
                );
                let body = String::from_utf8_lossy(&body).into_owned();
                let mut all = store.lock().expect("deliveries lock");
                all.push(Delivery {
                    id,
                    valid,
                    headers,
                    body,
                });
                answer(all.len(), valid)
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a local port");
    let url = format!(
        "http://{}/hook",
        listener.local_addr().expect("a local address")
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, got)
}
