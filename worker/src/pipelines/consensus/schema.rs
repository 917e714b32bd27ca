//! The JSON answers the model must give, declared once as [`Shape`]s: the
//! JSON Schema sent as `response_format`, the shape the prompt states and the
//! check that turns a model's text into typed values are all read off the
//! same field table, so their enums, ranges and lengths cannot drift apart.
//! A check error is a sentence the model can act on: it goes back in a
//! repair request.

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};
use serde_json::{Map, Value, json};

/// The verdicts a reviewer may give, as the model writes them.
const VERDICTS: &[&str] = &["approve", "revise", "reject"];

/// What one field of an answer may hold.
#[derive(Debug, Clone, Copy)]
enum Kind {
    /// A non-blank string of at most this many characters.
    Text { max_chars: usize },
    /// One of these strings (the check forgives case and spaces).
    OneOf(&'static [&'static str]),
    /// A whole number in this closed range (as JSON Schema's `integer`,
    /// 7.0 counts). Whole, because grammar-constrained decoders bound
    /// integers but not always other numbers: llama.cpp's lets a `number`
    /// with `maximum: 10` come out as 9538.74.
    Integer { min: i64, max: i64 },
    /// A list of at most `max_items` strings of at most `max_chars` each.
    TextList { max_items: usize, max_chars: usize },
}

/// One field: its name, what it holds, and how the prompt describes it.
#[derive(Debug, Clone, Copy)]
struct Field {
    name: &'static str,
    kind: Kind,
    /// Stands for the value in the shape the prompt shows.
    hint: &'static str,
}

/// One answer's shape: every field is required, no other field is asked for.
#[derive(Debug)]
pub struct Shape {
    /// The schema's name in `response_format.json_schema.name`.
    pub name: &'static str,
    fields: &'static [Field],
}

/// The `expand` answer.
pub const PROPOSAL: Shape = Shape {
    name: "proposal",
    fields: &[
        Field {
            name: "title",
            kind: Kind::Text { max_chars: 120 },
            hint: "a short title",
        },
        Field {
            name: "proposal",
            kind: Kind::Text { max_chars: 2000 },
            hint: "the full proposal",
        },
    ],
};

/// A persona's review.
pub const REVIEW: Shape = Shape {
    name: "review",
    fields: &[
        Field {
            name: "verdict",
            kind: Kind::OneOf(VERDICTS),
            hint: "",
        },
        Field {
            name: "score",
            kind: Kind::Integer { min: 0, max: 10 },
            hint: "",
        },
        Field {
            name: "summary",
            kind: Kind::Text { max_chars: 240 },
            hint: "one or two sentences",
        },
        Field {
            name: "concerns",
            kind: Kind::TextList {
                max_items: 3,
                max_chars: 120,
            },
            hint: "a concern",
        },
    ],
};

impl Shape {
    /// The JSON Schema of this answer, strict as OpenAI's structured outputs
    /// want it: every property required, no other properties. Serialized,
    /// its properties keep the shape's order (see [`JsonSchema`]).
    pub fn json_schema(&self) -> JsonSchema<'_> {
        JsonSchema(self)
    }

    /// The shape as the prompt states it, e.g. `{"verdict": "approve" | ...}`.
    pub fn prompt_shape(&self) -> String {
        let fields: Vec<String> = self
            .fields
            .iter()
            .map(|field| format!("{:?}: {}", field.name, prompt_value(field)))
            .collect();
        format!("{{{}}}", fields.join(", "))
    }

    /// The answer's fields, checked against this shape and normalized
    /// (strings trimmed, verdicts lower case, blank list items dropped).
    /// Fields this shape does not name are ignored.
    fn check(&self, text: &str) -> Result<Map<String, Value>, String> {
        let object = json_object(text)?;
        let mut checked = Map::new();
        for field in self.fields {
            let value = object
                .get(field.name)
                .ok_or_else(|| format!("the field {:?} is missing", field.name))?;
            checked.insert(field.name.to_owned(), check_field(field, value)?);
        }
        Ok(checked)
    }
}

/// A shape's JSON Schema. It serializes its properties in the shape's
/// order, not sorted as a `serde_json::Map` would: grammar-constrained
/// decoders write the fields in schema order, and a model that has to write
/// a whole proposal before its title, or its concerns before its verdict,
/// rambles.
#[derive(Debug, Clone, Copy)]
pub struct JsonSchema<'a>(&'a Shape);

#[cfg(test)]
impl JsonSchema<'_> {
    /// As a JSON value (properties sorted), for comparisons.
    pub fn to_value(self) -> Value {
        serde_json::to_value(self).unwrap_or_default()
    }
}

impl Serialize for JsonSchema<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let fields = self.0.fields;
        let required: Vec<&str> = fields.iter().map(|f| f.name).collect();
        let mut map = serializer.serialize_map(Some(4))?;
        map.serialize_entry("type", "object")?;
        map.serialize_entry("properties", &Properties(fields))?;
        map.serialize_entry("required", &required)?;
        map.serialize_entry("additionalProperties", &false)?;
        map.end()
    }
}

/// The `properties` of a schema, in field order.
struct Properties(&'static [Field]);

impl Serialize for Properties {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for field in self.0 {
            map.serialize_entry(field.name, &property(field.kind))?;
        }
        map.end()
    }
}

fn property(kind: Kind) -> Value {
    match kind {
        Kind::Text { max_chars } => {
            json!({"type": "string", "minLength": 1, "maxLength": max_chars})
        }
        Kind::OneOf(options) => json!({"type": "string", "enum": options}),
        Kind::Integer { min, max } => json!({"type": "integer", "minimum": min, "maximum": max}),
        Kind::TextList {
            max_items,
            max_chars,
        } => json!({
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": max_chars},
            "maxItems": max_items,
        }),
    }
}

fn prompt_value(field: &Field) -> String {
    match field.kind {
        Kind::Text { max_chars } => format!("\"<{}, at most {max_chars} characters>\"", field.hint),
        Kind::OneOf(options) => options
            .iter()
            .map(|o| format!("{o:?}"))
            .collect::<Vec<_>>()
            .join(" | "),
        Kind::Integer { min, max } => format!("<a whole number from {min} to {max}>"),
        Kind::TextList {
            max_items,
            max_chars,
        } => format!(
            "[\"<{}, at most {max_chars} characters>\", ... at most {max_items}]",
            field.hint
        ),
    }
}

fn check_field(field: &Field, value: &Value) -> Result<Value, String> {
    let name = field.name;
    match field.kind {
        Kind::Text { max_chars } => match value {
            Value::String(s) => {
                let s = s.trim();
                if s.is_empty() {
                    Err(format!("the field {name:?} is empty"))
                } else if s.chars().count() > max_chars {
                    Err(format!(
                        "the field {name:?} has {} characters; it may have at most {max_chars}",
                        s.chars().count()
                    ))
                } else {
                    Ok(Value::String(s.to_owned()))
                }
            }
            other => Err(format!(
                "the field {name:?} is a JSON {}; it must be a string",
                kind(other)
            )),
        },
        Kind::OneOf(options) => {
            let choices = or_list(options);
            match value {
                Value::String(v) => {
                    let normal = v.trim().to_ascii_lowercase();
                    if options.contains(&normal.as_str()) {
                        Ok(Value::String(normal))
                    } else {
                        Err(format!("{name:?} is {v:?}; it must be {choices}"))
                    }
                }
                other => Err(format!(
                    "{name:?} is {other}; it must be the string {choices}"
                )),
            }
        }
        Kind::Integer { min, max } => match value {
            Value::Number(n) => match n.as_f64() {
                Some(x) if x.fract() == 0.0 && (min as f64..=max as f64).contains(&x) => {
                    Ok(json!(x))
                }
                _ => Err(format!(
                    "{name:?} is {n}; it must be a whole number from {min} to {max}"
                )),
            },
            other => Err(format!(
                "{name:?} is {other}; it must be a whole number from {min} to {max}"
            )),
        },
        Kind::TextList {
            max_items,
            max_chars,
        } => {
            let Value::Array(items) = value else {
                return Err(format!(
                    "{name:?} is {value}; it must be an array of strings"
                ));
            };
            let mut kept = Vec::new();
            for item in items {
                let Value::String(s) = item else {
                    return Err(format!("{name:?} holds {item}; it must hold only strings"));
                };
                let s = s.trim();
                if s.chars().count() > max_chars {
                    return Err(format!(
                        "{name:?} holds a string of {} characters; each may have at most {max_chars}",
                        s.chars().count()
                    ));
                }
                if !s.is_empty() {
                    kept.push(Value::String(s.to_owned()));
                }
            }
            if kept.len() > max_items {
                return Err(format!(
                    "{name:?} holds {} items; it may hold at most {max_items}",
                    kept.len()
                ));
            }
            Ok(Value::Array(kept))
        }
    }
}

/// `"a", "b" or "c"`.
fn or_list(options: &[&str]) -> String {
    let quoted: Vec<String> = options.iter().map(|o| format!("{o:?}")).collect();
    match quoted.split_last() {
        Some((last, [])) => last.clone(),
        Some((last, rest)) => format!("{} or {last}", rest.join(", ")),
        None => String::new(),
    }
}

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

    fn parse(name: &str) -> Option<Self> {
        [Verdict::Approve, Verdict::Revise, Verdict::Reject]
            .into_iter()
            .find(|v| v.as_str() == name)
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
    let fields = PROPOSAL.check(text)?;
    Ok(Proposal {
        title: text_of(&fields, "title"),
        text: text_of(&fields, "proposal"),
    })
}

/// Parses a review answer.
pub fn parse_review(text: &str) -> Result<Review, String> {
    let fields = REVIEW.check(text)?;
    let verdict = fields["verdict"]
        .as_str()
        .and_then(Verdict::parse)
        .ok_or_else(|| format!("\"verdict\" must be {}", or_list(VERDICTS)))?;
    Ok(Review {
        verdict,
        score: fields["score"].as_f64().unwrap_or_default(),
        summary: text_of(&fields, "summary"),
        concerns: fields["concerns"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|c| c.as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default(),
    })
}

/// A field [`Shape::check`] has already checked to be a string.
fn text_of(fields: &Map<String, Value>, name: &str) -> String {
    fields
        .get(name)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned()
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
            r#"{"verdict": "revise", "score": 6.0, "summary": " Needs a rollback plan. ", "concerns": ["no rollback", ""]}"#,
        )
        .unwrap();
        assert_eq!(
            review,
            Review {
                verdict: Verdict::Revise,
                score: 6.0,
                summary: "Needs a rollback plan.".into(),
                concerns: vec!["no rollback".into()],
            }
        );
    }

    #[test]
    fn extra_fields_are_ignored_and_the_verdict_forgives_case() {
        let review = parse_review(
            r#"{"verdict": " Approve", "score": 9, "summary": "Good.", "concerns": [], "mood": "happy"}"#,
        )
        .unwrap();
        assert_eq!(review.verdict, Verdict::Approve);
        assert!(review.concerns.is_empty());
    }

    #[test]
    fn the_review_schema_is_strict_with_the_validators_enums_ranges_and_lengths() {
        let schema = REVIEW.json_schema().to_value();
        assert_eq!(
            schema,
            json!({
                "type": "object",
                "properties": {
                    "verdict": {"type": "string", "enum": ["approve", "revise", "reject"]},
                    "score": {"type": "integer", "minimum": 0, "maximum": 10},
                    "summary": {"type": "string", "minLength": 1, "maxLength": 240},
                    "concerns": {
                        "type": "array", "maxItems": 3,
                        "items": {"type": "string", "minLength": 1, "maxLength": 120},
                    },
                },
                "required": ["verdict", "score", "summary", "concerns"],
                "additionalProperties": false,
            })
        );
    }

    /// Reads the bounds back out of the schema and probes the validator at
    /// and just past each one: the two cannot disagree.
    #[test]
    fn the_validator_accepts_exactly_what_the_schema_allows() {
        let schema = REVIEW.json_schema().to_value();
        let p = &schema["properties"];
        let base = || json!({"verdict": "approve", "score": 5, "summary": "Fine.", "concerns": []});
        let with = |field: &str, value: Value| {
            let mut answer = base();
            answer[field] = value;
            parse_review(&answer.to_string())
        };
        for verdict in p["verdict"]["enum"].as_array().unwrap() {
            assert!(with("verdict", verdict.clone()).is_ok(), "{verdict}");
        }
        assert!(with("verdict", json!("bad")).is_err());
        assert_eq!(p["score"]["type"], "integer");
        let (min, max) = (
            p["score"]["minimum"].as_i64().unwrap(),
            p["score"]["maximum"].as_i64().unwrap(),
        );
        assert!(with("score", json!(min)).is_ok() && with("score", json!(max)).is_ok());
        assert!(
            with("score", json!(7.0)).is_ok(),
            "JSON Schema's integer takes 7.0"
        );
        assert!(with("score", json!(6.5)).is_err());
        assert!(with("score", json!(min - 1)).is_err());
        assert!(with("score", json!(max + 1)).is_err());
        let longest = p["summary"]["maxLength"].as_u64().unwrap() as usize;
        assert!(with("summary", json!("é".repeat(longest))).is_ok());
        assert!(with("summary", json!("é".repeat(longest + 1))).is_err());
        let items = p["concerns"]["maxItems"].as_u64().unwrap() as usize;
        let item_chars = p["concerns"]["items"]["maxLength"].as_u64().unwrap() as usize;
        assert!(with("concerns", json!(vec!["c"; items])).is_ok());
        assert!(with("concerns", json!(vec!["c"; items + 1])).is_err());
        assert!(with("concerns", json!(["x".repeat(item_chars)])).is_ok());
        assert!(with("concerns", json!(["x".repeat(item_chars + 1)])).is_err());
        for required in schema["required"].as_array().unwrap() {
            let mut answer = base();
            answer
                .as_object_mut()
                .unwrap()
                .remove(required.as_str().unwrap());
            assert!(parse_review(&answer.to_string()).is_err(), "{required}");
        }
        let proposal = PROPOSAL.json_schema().to_value();
        let title = proposal["properties"]["title"]["maxLength"]
            .as_u64()
            .unwrap() as usize;
        let answer = |t: String| json!({"title": t, "proposal": "p"}).to_string();
        assert!(parse_proposal(&answer("t".repeat(title))).is_ok());
        assert!(parse_proposal(&answer("t".repeat(title + 1))).is_err());
    }

    #[test]
    fn the_schema_lists_the_fields_in_the_order_the_prompt_asks_for_them() {
        let text = serde_json::to_string(&REVIEW.json_schema()).unwrap();
        let at = |name: &str| text.find(&format!("\"{name}\":{{")).unwrap();
        assert!(at("verdict") < at("score") && at("score") < at("summary"));
        assert!(at("summary") < at("concerns"), "{text}");
        let text = serde_json::to_string(&PROPOSAL.json_schema()).unwrap();
        assert!(text.find("\"title\":{").unwrap() < text.find("\"proposal\":{").unwrap());
    }

    #[test]
    fn the_prompt_states_the_same_shape() {
        assert_eq!(
            REVIEW.prompt_shape(),
            r#"{"verdict": "approve" | "revise" | "reject", "score": <a whole number from 0 to 10>, "summary": "<one or two sentences, at most 240 characters>", "concerns": ["<a concern, at most 120 characters>", ... at most 3]}"#
        );
        assert_eq!(
            PROPOSAL.prompt_shape(),
            r#"{"title": "<a short title, at most 120 characters>", "proposal": "<the full proposal, at most 2000 characters>"}"#
        );
    }

    #[test]
    fn a_fenced_answer_is_accepted() {
        let text = "```json\n{\"verdict\": \"reject\", \"score\": 1, \"summary\": \"No.\", \"concerns\": []}\n```";
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
                "\"score\" is 11; it must be a whole number from 0 to 10",
            ),
            (
                r#"{"verdict": "approve", "score": "high", "summary": "x"}"#,
                "must be a whole number",
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
            (
                r#"{"verdict": "approve", "score": 5, "summary": "x"}"#,
                "\"concerns\" is missing",
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
