//! What a provider's error message must not tell a caller: hints of Sluice's provider keys
//! (OpenAI's `Incorrect API key provided: sk-abc***xyz`) and the operator's account ids
//! (`org-…`, `proj_…`) that appear in rate-limit and quota messages. Applied to every
//! provider error body a caller can see, whole or mid-stream, before it leaves the worker.

use std::borrow::Cow;
use std::sync::LazyLock;

use regex::Regex;

/// Each pattern and what replaces it. Word boundaries keep words such as `task-force` or
/// `cyborg-7` intact.
static PATTERNS: LazyLock<Vec<(Regex, &'static str)>> = LazyLock::new(|| {
    [
        // OpenAI's wording names the key (or a masked hint of it) after "provided:".
        (
            r"(?i)(incorrect api key provided:\s*)[^\s.,;\x22\\]+",
            "${1}<redacted>",
        ),
        // OpenAI (`sk-`, `sk-proj-`, masked `sk-abc***xyz`), Anthropic (`sk-ant-`).
        (r"\bsk-[A-Za-z0-9_\-*]{2,}", "sk-<redacted>"),
        // Google API keys.
        (r"\bAIza[0-9A-Za-z_\-]{8,}", "AIza<redacted>"),
        // Bearer tokens quoted back.
        (
            r"(?i)\bbearer\s+[A-Za-z0-9_\-.~+/*]{8,}=*",
            "Bearer <redacted>",
        ),
        // OpenAI organization, project and user ids.
        // (24 characters after the prefix; 12 or more here, so `org-chart` stays).
        (r"\borg-[A-Za-z0-9]{12,}", "org-<redacted>"),
        (r"\bproj_[A-Za-z0-9]{12,}", "proj_<redacted>"),
        (r"\buser-[A-Za-z0-9]{12,}", "user-<redacted>"),
    ]
    .into_iter()
    .filter_map(|(pattern, with)| match Regex::new(pattern) {
        Ok(re) => Some((re, with)),
        Err(error) => {
            // A constant pattern: covered by the tests below.
            tracing::error!(%error, pattern, "scrub pattern does not compile");
            None
        }
    })
    .collect()
});

/// `text` without key hints or account ids. The replacements hold no quotes or
/// backslashes, so scrubbing JSON text leaves it JSON.
pub fn scrub(text: &str) -> Cow<'_, str> {
    let mut out = Cow::Borrowed(text);
    for (re, with) in PATTERNS.iter() {
        if let Cow::Owned(s) = re.replace_all(&out, *with) {
            out = Cow::Owned(s);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn openai_key_hints_and_org_ids_do_not_reach_callers() {
        // Real OpenAI error bodies (key and ids made up).
        let bodies = [
            r#"{"error": {"message": "Incorrect API key provided: sk-proj-abc1***************************************xyz9. You can find your API key at https://platform.openai.com/account/api-keys.", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}"#,
            r#"{"error": {"message": "Incorrect API key provided: sk-abc***xyz. You can find your API key at https://platform.openai.com/account/api-keys.", "type": "invalid_request_error", "param": null, "code": "invalid_api_key"}}"#,
            r#"{"error": {"message": "Rate limit reached for gpt-4o-mini in organization org-Zx81ab3CDEfgHIjkLMno4pQr on tokens per min (TPM): Limit 200000, Used 199812, Requested 1024. Please try again in 250ms.", "type": "tokens", "param": null, "code": "rate_limit_exceeded"}}"#,
            r#"{"error": {"message": "You exceeded your current quota for project proj_Ab12Cd34Ef56Gh78 (organization org-Zx81ab3CDEfgHIjkLMno4pQr).", "type": "insufficient_quota", "param": null, "code": "insufficient_quota"}}"#,
            r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key sk-ant-api03-AbCdEf12345"}}"#,
            r#"{"error": {"code": 400, "message": "API key not valid: AIzaSyA-1234567890abcdefghij. Please pass a valid API key.", "status": "INVALID_ARGUMENT"}}"#,
            r#"{"error": {"message": "Invalid authorization header Bearer sk0123456789abcdef", "type": "invalid_request_error"}}"#,
        ];
        for body in bodies {
            let clean = scrub(body);
            for secret in [
                "abc1",
                "xyz9",
                "sk-abc",
                "***xyz",
                "Zx81ab3",
                "Ab12Cd34",
                "api03-AbCdEf",
                "AIzaSyA",
                "sk0123456789",
            ] {
                assert!(!clean.contains(secret), "{secret} left in {clean}");
            }
            let parsed: Value = serde_json::from_str(&clean).unwrap();
            assert!(parsed["error"]["message"].is_string(), "{clean}");
        }
        let rate = scrub(bodies[2]);
        assert!(
            rate.contains("in organization org-<redacted> on tokens per min"),
            "{rate}"
        );
    }

    #[test]
    fn ordinary_text_is_left_alone() {
        for text in [
            "The task-force met at the cyborg-7 lab; org-chart and sk- prefixes are words.",
            r#"{"error": {"message": "This model's maximum context length is 128000 tokens.", "type": "invalid_request_error"}}"#,
        ] {
            assert!(matches!(scrub(text), Cow::Borrowed(_)), "{text}");
        }
    }
}
