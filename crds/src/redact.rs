//! What of a URL may appear in a message, a log line or a status: never its
//! userinfo (`user:password@`) nor its query string (presigned URLs carry
//! their signature and credential there).

/// `text` without userinfo, query and fragment; a query is shown as `?…`
/// so a reader still sees there was one.
pub fn url(text: &str) -> String {
    let (head, had_query) = match text.find(['?', '#']) {
        Some(at) => (&text[..at], text[at..].starts_with('?')),
        None => (text, false),
    };
    let head = match head.find("://") {
        Some(scheme_end) => {
            let authority_start = scheme_end + 3;
            let authority_end = head[authority_start..]
                .find('/')
                .map_or(head.len(), |i| authority_start + i);
            match head[authority_start..authority_end].rfind('@') {
                Some(at) => format!(
                    "{}{}",
                    &head[..authority_start],
                    &head[authority_start + at + 1..]
                ),
                None => head.to_owned(),
            }
        }
        None => head.to_owned(),
    };
    if had_query {
        format!("{head}?…")
    } else {
        head
    }
}

/// Replaces every URL inside `message` (anything from `scheme://` to the
/// next space or quote) with its redacted form: for error texts of
/// libraries that quote the URL they were given.
pub fn urls_in(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut rest = message;
    while let Some(at) = rest.find("://") {
        let start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || c == '+' || c == '-' || c == '.'))
            .map_or(0, |i| i + 1);
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == '>' || c == ')')
            .map_or(rest.len(), |i| at + i);
        out.push_str(&rest[..start]);
        out.push_str(&url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn userinfo_and_queries_are_dropped() {
        assert_eq!(
            url("https://u:hunter2@cdn.example/a.mp3?X-Amz-Signature=s3cr3t"),
            "https://cdn.example/a.mp3?…"
        );
        assert_eq!(url("s3://media/a.wav"), "s3://media/a.wav");
        assert_eq!(url("https://cdn.example/a#frag"), "https://cdn.example/a");
        assert_eq!(url("https://a@b@c.example/x"), "https://c.example/x");
    }

    #[test]
    fn urls_inside_messages_are_redacted() {
        let message = "error sending request for url (https://cdn.example/a?token=s3cr3t): timed out; see \"http://u:pw@h/x\"";
        let shown = urls_in(message);
        assert!(
            !shown.contains("s3cr3t") && !shown.contains("pw@"),
            "{shown}"
        );
        assert!(shown.contains("https://cdn.example/a?…"), "{shown}");
        assert!(shown.ends_with("see \"http://h/x\""), "{shown}");
    }
}
