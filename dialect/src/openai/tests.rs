use serde_json::json;

use super::*;

#[test]
fn content_parts_and_images() {
    let m = json!({"role": "user", "content": [
        {"type": "text", "text": "look"},
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,iVBORw0KGgo="}},
        {"type": "image_url", "image_url": {"url": "https://example.com/cat.jpg"}},
        {"type": "input_audio", "input_audio": {}}
    ]});
    assert_eq!(
        parts(&m),
        vec![
            Part::Text("look".into()),
            Part::Image(Image::Inline {
                mime: "image/png".into(),
                data: "iVBORw0KGgo=".into()
            }),
            Part::Image(Image::Url("https://example.com/cat.jpg".into())),
        ]
    );
    assert_eq!(text(&m), "look");
}

#[test]
fn tool_calls_with_bad_arguments_become_empty_objects() {
    let m = json!({"role": "assistant", "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": "{\"a\":1}"}},
        {"id": "call_2", "type": "function", "function": {"name": "g", "arguments": "not json"}}
    ]});
    let calls = tool_calls(&m);
    assert_eq!(calls[0].arguments, json!({"a": 1}));
    assert_eq!(calls[1].arguments, json!({}));
    assert_eq!(tool_names(&[m])["call_2"], "g");
}
