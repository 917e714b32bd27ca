//! Kubernetes' `$(VAR)` expansion, as the kubelet applies it to env values,
//! `command` and `args`.
//!
//! A port of `third_party/forked/golang/expansion` from kubernetes/kubernetes,
//! including its corner cases: `$$` is an escaped `$`, a reference to an
//! undefined variable is left as it was written, and an unterminated `$(` is
//! kept literally.

/// Expands every `$(NAME)` in `input` with `lookup(NAME)`.
pub(crate) fn expand<'a>(input: &str, lookup: impl Fn(&str) -> Option<&'a str>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(dollar) = rest.find('$') {
        out.push_str(&rest[..dollar]);
        let after = &rest[dollar + 1..];
        let Some(next) = after.chars().next() else {
            // A trailing `$` has nothing to escape or reference.
            out.push('$');
            rest = after;
            break;
        };
        match next {
            '$' => {
                out.push('$');
                rest = &after[1..];
            }
            '(' => match after.find(')') {
                Some(close) => {
                    let name = &after[1..close];
                    match lookup(name) {
                        Some(value) => out.push_str(value),
                        None => {
                            out.push_str("$(");
                            out.push_str(name);
                            out.push(')');
                        }
                    }
                    rest = &after[close + 1..];
                }
                None => {
                    out.push_str("$(");
                    rest = &after[1..];
                }
            },
            other => {
                out.push('$');
                out.push(other);
                rest = &after[other.len_utf8()..];
            }
        }
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup(name: &str) -> Option<&'static str> {
        match name {
            "VAR_A" => Some("A"),
            "VAR_B" => Some("B"),
            "VAR_EMPTY" => Some(""),
            "VAR_REF" => Some("$(VAR_A)"),
            _ => None,
        }
    }

    #[test]
    fn matches_the_kubernetes_expansion_cases() {
        // Cases from kubernetes/kubernetes third_party/forked/golang/expansion.
        let cases = [
            ("$(VAR_A)", "A"),
            ("___$(VAR_B)___", "___B___"),
            ("$(VAR_A)-$(VAR_A)", "A-A"),
            ("$(VAR_EMPTY)", ""),
            ("$(VAR_REF)", "$(VAR_A)"),
            ("$(UNKNOWN)", "$(UNKNOWN)"),
            ("$$(VAR_A)", "$(VAR_A)"),
            ("$$$(VAR_A)", "$A"),
            ("$$$$(VAR_A)", "$$(VAR_A)"),
            ("$(VAR_A", "$(VAR_A"),
            ("$VAR_A", "$VAR_A"),
            ("$", "$"),
            ("foo$", "foo$"),
            ("$()", "$()"),
            ("$(VAR_A)$(", "A$("),
            ("€$(VAR_B)€$€", "€B€$€"),
            ("no references", "no references"),
        ];
        for (input, expected) in cases {
            assert_eq!(expand(input, lookup), expected, "input {input:?}");
        }
    }
}
