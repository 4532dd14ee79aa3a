//! The console's HTML: one layout, tables, money, and bar charts drawn as inline SVG on the
//! server. No script runs in the browser (the CSP forbids it), so a page is whole when it
//! arrives; every chart also has its numbers as a table.

use maud::{html, Markup, DOCTYPE};

use super::session::Role;

/// The stylesheet (`/console/style.css`).
pub(super) const STYLE: &str = r#"
:root { --fg:#1d2330; --muted:#5b6475; --line:#d9dde5; --bg:#f7f8fa; --accent:#2457c5; --warn:#a8400c; --ok:#1f7a3d; }
* { box-sizing: border-box; }
body { margin:0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color:var(--fg); background:var(--bg); }
a { color: var(--accent); }
a:focus, button:focus, input:focus, select:focus { outline: 3px solid #8fb0ff; outline-offset: 1px; }
header { background:#fff; border-bottom:1px solid var(--line); padding:.6rem 1.2rem; display:flex; gap:1.2rem; align-items:center; flex-wrap:wrap; }
header .brand { font-weight:700; }
header nav ul { list-style:none; display:flex; gap:.9rem; margin:0; padding:0; flex-wrap:wrap; }
header nav a[aria-current=page] { font-weight:700; text-decoration:none; color:var(--fg); }
header .who { margin-left:auto; color:var(--muted); display:flex; gap:.6rem; align-items:center; }
main { padding:1rem 1.2rem 3rem; max-width:1200px; }
h1 { font-size:1.35rem; margin:.2rem 0 1rem; }
h2 { font-size:1.1rem; margin:1.6rem 0 .5rem; }
table { border-collapse:collapse; background:#fff; border:1px solid var(--line); margin:.4rem 0 1rem; }
th, td { padding:.3rem .6rem; border-bottom:1px solid var(--line); text-align:left; vertical-align:top; }
td.num, th.num { text-align:right; font-variant-numeric: tabular-nums; }
caption { text-align:left; color:var(--muted); padding:.2rem 0; }
form.inline { display:inline; }
form.filters { display:flex; gap:.8rem; flex-wrap:wrap; align-items:end; margin-bottom:1rem; }
label { display:flex; flex-direction:column; font-size:.85rem; color:var(--muted); gap:.15rem; }
input, select, button { font:inherit; padding:.3rem .5rem; }
button { cursor:pointer; border:1px solid var(--accent); background:var(--accent); color:#fff; border-radius:4px; }
button.secondary { background:#fff; color:var(--accent); }
button.danger { border-color:var(--warn); background:#fff; color:var(--warn); }
.note { color:var(--muted); }
.alert { color:var(--warn); font-weight:600; }
.ok { color:var(--ok); }
.secret { font-family: ui-monospace, monospace; background:#fff8e5; border:1px solid #e7c66b; padding:.5rem; display:inline-block; }
.error { background:#fdecea; border:1px solid #f1b0a8; padding:.5rem .8rem; }
svg.chart { background:#fff; border:1px solid var(--line); max-width:100%; height:auto; }
svg.chart rect.bar { fill: var(--accent); }
svg.chart text { font-size:11px; fill: var(--muted); }
.login { max-width:26rem; margin:4rem auto; background:#fff; border:1px solid var(--line); padding:1.5rem; }
.login label { margin-bottom:.8rem; }
"#;

/// The pages, in the navigation's order: (path, title).
pub(super) const PAGES: &[(&str, &str)] = &[
    ("/console", "Spend"),
    ("/console/budgets", "Budgets"),
    ("/console/latency", "Latency & errors"),
    ("/console/backlog", "Backlog"),
    ("/console/batches", "Batches"),
    ("/console/audit", "Audit"),
    ("/console/keys", "Keys"),
];

/// Every page's `<head>`.
fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Sluice console" }
            link rel="stylesheet" href="/console/style.css";
        }
    }
}

/// A page of the console: navigation, who is logged in, a logout button.
pub(super) fn page(path: &str, title: &str, role: Role, csrf: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header {
                    span.brand { "Sluice console" }
                    nav aria-label="Console pages" {
                        ul {
                            @for (href, name) in PAGES {
                                li {
                                    @if *href == path {
                                        a href=(href) aria-current="page" { (name) }
                                    } @else {
                                        a href=(href) { (name) }
                                    }
                                }
                            }
                        }
                    }
                    div.who {
                        span { "Logged in: " (role.as_str()) }
                        form.inline method="post" action="/console/logout" {
                            input type="hidden" name="csrf" value=(csrf);
                            button.secondary type="submit" { "Log out" }
                        }
                    }
                }
                main { h1 { (title) } (body) }
            }
        }
    }
}

/// The login page (`problem`: why the last try failed).
pub(super) fn login(problem: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Log in"))
            body {
                main.login {
                    h1 { "Sluice console" }
                    @if let Some(problem) = problem {
                        p.error role="alert" { (problem) }
                    }
                    form method="post" action="/console/login" {
                        label for="key" { "Console key or admin key"
                            input #key type="password" name="key" autocomplete="current-password" required autofocus;
                        }
                        button type="submit" { "Log in" }
                    }
                    p.note { "The console key only reads; the admin key may also create, rotate and revoke API keys." }
                }
            }
        }
    }
}

/// A page that says what went wrong (a store down, a refused change).
pub(super) fn problem(message: &str) -> Markup {
    html! { p.error role="alert" { (message) } }
}

/// Nano-USD as dollars with six decimals (exact: integer arithmetic).
pub(super) fn usd(nanos: i64) -> String {
    let sign = if nanos < 0 { "-" } else { "" };
    let micros = (nanos.unsigned_abs() + 500) / 1000;
    format!("{sign}${}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// `part` of `whole` as a percentage with one decimal ("–" of nothing).
pub(super) fn pct(part: u64, whole: u64) -> String {
    if whole == 0 {
        "–".into()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

/// A bar chart of (label, nano-USD) with an accessible name; each bar has its value as a
/// tooltip. The numbers are also in a table beside it (the caller's).
pub(super) fn bar_chart(name: &str, bars: &[(String, i64)]) -> Markup {
    const W: f64 = 760.0;
    const H: f64 = 200.0;
    const LEFT: f64 = 64.0;
    const BOTTOM: f64 = 34.0;
    let top = bars.iter().map(|(_, v)| *v).max().unwrap_or(0).max(1);
    let n = bars.len().max(1) as f64;
    let slot = (W - LEFT - 8.0) / n;
    let plot = H - BOTTOM - 8.0;
    // A label on every bar when they fit, else on every k-th.
    let every = (bars.len() / 12).max(1);
    html! {
        svg.chart role="img" aria-label=(name) viewBox=(format!("0 0 {W} {H}")) width=(W) height=(H) xmlns="http://www.w3.org/2000/svg" {
            title { (name) }
            text x="4" y="14" { (usd(top)) }
            text x="4" y=(H - BOTTOM) { "$0" }
            line x1=(LEFT) y1=(H - BOTTOM) x2=(W - 4.0) y2=(H - BOTTOM) stroke="#d9dde5" {}
            @for (i, (label, value)) in bars.iter().enumerate() {
                @let h = (*value).max(0) as f64 / top as f64 * plot;
                @let x = LEFT + i as f64 * slot;
                rect.bar x=(format!("{:.1}", x + slot * 0.1)) y=(format!("{:.1}", H - BOTTOM - h)) width=(format!("{:.1}", slot * 0.8)) height=(format!("{:.1}", h)) {
                    title { (label) ": " (usd(*value)) }
                }
                @if i % every == 0 {
                    text x=(format!("{:.1}", x + slot * 0.5)) y=(H - BOTTOM + 14.0) text-anchor="middle" {
                        (short_label(label))
                    }
                }
            }
        }
    }
}

/// "2026-03-01" → "03-01"; "2026-03-01 05:00:00" → "05h".
fn short_label(label: &str) -> String {
    match label.len() {
        19 => format!("{}h", label.get(11..13).unwrap_or(label)),
        10 => label.get(5..).unwrap_or(label).to_string(),
        _ => label.to_string(),
    }
}

/// The hidden CSRF field of a change's form.
pub(super) fn csrf_field(token: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(token); }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn money_is_exact_to_the_micro_dollar() {
        assert_eq!(usd(0), "$0.000000");
        assert_eq!(usd(1_234_567_890), "$1.234568");
        assert_eq!(usd(999), "$0.000001");
        assert_eq!(usd(-2_500_000_000), "-$2.500000");
        assert_eq!(pct(1, 3), "33.3%");
        assert_eq!(pct(1, 0), "–");
    }

    #[test]
    fn what_a_tenant_wrote_is_escaped() {
        let page = bar_chart("<script>alert(1)</script>", &[("<b>".into(), 5)]).into_string();
        assert!(
            !page.contains("<script>") && !page.contains("<b>"),
            "{page}"
        );
        assert!(page.contains("&lt;script&gt;"));
    }
}
