//! The JSON answers the model must give, their shapes as the prompts state
//! them, and the checks that turn a model's text into typed values. An error
//! is a sentence the model can act on: it goes back in a repair request.

use serde::Serialize;
use serde_json::{Map, Value};

/// The shape of the `expand` answer, as the prompt states it.
pub const PROPOSAL_SHAPE: &str =
    r#"{"title": "<a short title>", "proposal": "<the full proposal>"}"#;

/// The shape of a review, as the prompt states it.
pub const REVIEW_SHAPE: &str = r#"{"verdict": "approve" | "revise" | "reject", "score": <a number from 0 to 10>, "summary": "<one or two sentences>", "concerns": ["<a concern>", ...]}"#;

/// The expanded proposal the personas review.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    pub title: String,
    pub text: String,
}

/// What a reviewer recommends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Approve,
    Revise,
    Reject,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Revise => "revise",
            Verdict::Reject => "reject",
        }
    }
}

/// One persona's review.
#[derive(Debug, Clone, PartialEq)]
pub struct Review {
    pub verdict: Verdict,
    /// 0 to 10.
    pub score: f64,
    pub summary: String,
    pub concerns: Vec<String>,
}

/// Parses an `expand` answer.
pub fn parse_proposal(text: &str) -> Result<Proposal, String> {
    let object = json_object(text)?;
    Ok(Proposal {
        title: string_field(&object, "title")?,
        text: string_field(&object, "proposal")?,
    })
}

/// Parses a review answer.
pub fn parse_review(text: &str) -> Result<Review, String> {
    let object = json_object(text)?;
    let verdict = match object.get("verdict") {
        None => return Err("the field \"verdict\" is missing".into()),
        Some(Value::String(v)) => match v.trim().to_ascii_lowercase().as_str() {
            "approve" => Verdict::Approve,
            "revise" => Verdict::Revise,
            "reject" => Verdict::Reject,
            _ => {
                return Err(format!(
                    "\"verdict\" is {v:?}; it must be \"approve\", \"revise\" or \"reject\""
                ));
            }
        },
        Some(other) => {
            return Err(format!(
                "\"verdict\" is {other}; it must be the string \"approve\", \"revise\" or \"reject\""
            ));
        }
    };
    let score = match object.get("score") {
        None => return Err("the field \"score\" is missing".into()),
        Some(Value::Number(n)) => match n.as_f64() {
            Some(score) if (0.0..=10.0).contains(&score) => score,
            _ => return Err(format!("\"score\" is {n}; it must be from 0 to 10")),
        },
        Some(other) => {
            return Err(format!(
                "\"score\" is {other}; it must be a number from 0 to 10"
            ));
        }
    };
    let summary = string_field(&object, "summary")?;
    let concerns = match object.get("concerns") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items
            .iter()
            .map(|item| match item {
                Value::String(s) => Ok(s.trim().to_owned()),
                other => Err(format!(
                    "\"concerns\" holds {other}; it must hold only strings"
                )),
            })
            .filter(|c| c.as_ref().map_or(true, |c| !c.is_empty()))
            .collect::<Result<_, _>>()?,
        Some(other) => {
            return Err(format!(
                "\"concerns\" is {other}; it must be an array of strings"
            ));
        }
    };
    Ok(Review {
        verdict,
        score,
        summary,
        concerns,
    })
}

/// The one JSON object in `text`. Models often wrap JSON in a Markdown code
/// fence even when told not to; that much is forgiven.
fn json_object(text: &str) -> Result<Map<String, Value>, String> {
    let text = strip_fence(text.trim());
    if text.is_empty() {
        return Err("the answer is empty; it must be one JSON object".into());
    }
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(other) => Err(format!(
            "the answer is a JSON {}, not a JSON object",
            kind(&other)
        )),
        Err(e) => Err(format!("the answer is not valid JSON ({e})")),
    }
}

fn strip_fence(text: &str) -> &str {
    let Some(rest) = text.strip_prefix("```") else {
        return text;
    };
    // Drop the info string (```json) up to the end of the first line.
    let body = rest.split_once('\n').map_or("", |(_, body)| body);
    body.trim_end().strip_suffix("```").unwrap_or(body).trim()
}

fn string_field(object: &Map<String, Value>, name: &str) -> Result<String, String> {
    match object.get(name) {
        None => Err(format!("the field {name:?} is missing")),
        Some(Value::String(s)) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
        Some(Value::String(_)) => Err(format!("the field {name:?} is empty")),
        Some(other) => Err(format!(
            "the field {name:?} is a JSON {}; it must be a string",
            kind(other)
        )),
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_review_parses() {
        let review = parse_review(
            r#"{"verdict": "revise", "score": 6.5, "summary": " Needs a rollback plan. ", "concerns": ["no rollback", ""]}"#,
        )
        .unwrap();
        assert_eq!(
            review,
            Review {
                verdict: Verdict::Revise,
                score: 6.5,
                summary: "Needs a rollback plan.".into(),
                concerns: vec!["no rollback".into()],
            }
        );
    }

    #[test]
    fn concerns_are_optional_and_extra_fields_are_ignored() {
        let review = parse_review(
            r#"{"verdict": "Approve", "score": 9, "summary": "Good.", "mood": "happy"}"#,
        )
        .unwrap();
        assert_eq!(review.verdict, Verdict::Approve);
        assert!(review.concerns.is_empty());
    }

    #[test]
    fn a_fenced_answer_is_accepted() {
        let text = "```json\n{\"verdict\": \"reject\", \"score\": 1, \"summary\": \"No.\"}\n```";
        assert_eq!(parse_review(text).unwrap().verdict, Verdict::Reject);
    }

    #[test]
    fn errors_say_what_to_fix() {
        let cases = [
            ("", "the answer is empty"),
            ("Sure! Here is my review", "not valid JSON"),
            ("[1, 2]", "a JSON array, not a JSON object"),
            (r#"{"score": 5, "summary": "x"}"#, "\"verdict\" is missing"),
            (
                r#"{"verdict": "maybe", "score": 5, "summary": "x"}"#,
                "\"verdict\" is \"maybe\"",
            ),
            (
                r#"{"verdict": "approve", "score": 11, "summary": "x"}"#,
                "\"score\" is 11; it must be from 0 to 10",
            ),
            (
                r#"{"verdict": "approve", "score": "high", "summary": "x"}"#,
                "must be a number",
            ),
            (
                r#"{"verdict": "approve", "score": 5, "summary": "  "}"#,
                "\"summary\" is empty",
            ),
            (
                r#"{"verdict": "approve", "score": 5, "summary": "x", "concerns": "all"}"#,
                "must be an array of strings",
            ),
            (
                r#"{"verdict": "approve", "score": 5, "summary": "x", "concerns": [3]}"#,
                "must hold only strings",
            ),
        ];
        for (text, expected) in cases {
            let error = parse_review(text).unwrap_err();
            assert!(error.contains(expected), "{text:?}: {error}");
        }
    }

    #[test]
    fn a_proposal_needs_a_title_and_text() {
        let proposal =
            parse_proposal(r#"{"title": "Cache billing", "proposal": "Put a cache in front."}"#)
                .unwrap();
        assert_eq!(proposal.title, "Cache billing");
        assert_eq!(proposal.text, "Put a cache in front.");
        let error = parse_proposal(r#"{"title": "Cache billing"}"#).unwrap_err();
        assert_eq!(error, "the field \"proposal\" is missing");
        let error = parse_proposal(r#"{"title": 3, "proposal": "p"}"#).unwrap_err();
        assert!(error.contains("is a JSON number"), "{error}");
    }
}
