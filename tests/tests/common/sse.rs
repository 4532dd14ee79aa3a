//! Reading a whole server-sent-events body, as the tests receive it.

/// The `(event name, data)` of each event (name empty when the event has none); a data
/// field's text after `data: ` (or `data:`), several data lines joined with `\n`.
pub fn sse_events(body: &str) -> Vec<(String, String)> {
    body.split("\n\n")
        .filter_map(|event| {
            let mut name = String::new();
            let mut data = Vec::new();
            for line in event.lines() {
                if let Some(n) = line.strip_prefix("event:") {
                    name = n.trim().to_string();
                } else if let Some(d) = line
                    .strip_prefix("data: ")
                    .or_else(|| line.strip_prefix("data:"))
                {
                    data.push(d);
                }
            }
            (!data.is_empty()).then(|| (name, data.join("\n")))
        })
        .collect()
}

/// The `data:` payload of each event.
pub fn sse_data(body: &str) -> Vec<String> {
    sse_events(body).into_iter().map(|(_, data)| data).collect()
}
