//! From the personas' reviews to one decision. The rule, in words:
//!
//! - **reject** when more than half of the reviewers reject, or the mean
//!   score is below 4;
//! - **approve** when more than half approve, nobody rejects, and the mean
//!   score is at least 7;
//! - **revise** otherwise.
//!
//! `agreement` is the share of reviewer pairs that gave the same verdict:
//! 1 when all agree, 0 when no two do (1 for a single reviewer).

use serde_json::{Value, json};

use super::schema::{Proposal, Review, Verdict};

const REJECT_BELOW: f64 = 4.0;
const APPROVE_FROM: f64 = 7.0;

/// Caps that keep `status.result` a few KB whatever the model wrote (the
/// review schema asks for no more than this; a JSON-mode answer may be longer).
const TITLE_CHARS: usize = 200;
const REVIEW_SUMMARY_CHARS: usize = 240;
const CONCERNS: usize = 3;
const CONCERN_CHARS: usize = 120;
const CITED_SUMMARY_CHARS: usize = 120;

/// One persona's review, under its name.
#[derive(Debug, Clone, PartialEq)]
pub struct PersonaReview {
    pub persona: String,
    pub review: Review,
}

/// The outcome of the aggregate step.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub verdict: Verdict,
    /// Mean score, one decimal.
    pub score: f64,
    /// Share of reviewer pairs that agree, two decimals.
    pub agreement: f64,
    pub approve: usize,
    pub revise: usize,
    pub reject: usize,
    /// One paragraph citing every persona.
    pub summary: String,
}

pub fn decide(reviews: &[PersonaReview]) -> Decision {
    let count = |verdict| {
        reviews
            .iter()
            .filter(|r| r.review.verdict == verdict)
            .count()
    };
    let (approve, revise, reject) = (
        count(Verdict::Approve),
        count(Verdict::Revise),
        count(Verdict::Reject),
    );
    let n = reviews.len();
    let mean = if n == 0 {
        0.0
    } else {
        reviews.iter().map(|r| r.review.score).sum::<f64>() / n as f64
    };
    let verdict = if n == 0 || reject * 2 > n || mean < REJECT_BELOW {
        Verdict::Reject
    } else if approve * 2 > n && reject == 0 && mean >= APPROVE_FROM {
        Verdict::Approve
    } else {
        Verdict::Revise
    };
    let agreement = pairwise_agreement(&[approve, revise, reject], n);
    let score = round(mean, 10.0);
    let agreement = round(agreement, 100.0);
    let mut summary = format!(
        "{} with a mean score of {score:.1}/10 ({approve} approve, {revise} revise, {reject} reject; agreement {agreement:.2}).",
        capitalized(verdict.as_str()),
    );
    for r in reviews {
        summary.push_str(&format!(
            " {} ({}, {}/10): {}",
            r.persona,
            r.review.verdict.as_str(),
            r.review.score,
            cut(&r.review.summary, CITED_SUMMARY_CHARS)
        ));
        if !summary.ends_with(['.', '!', '?', '…']) {
            summary.push('.');
        }
    }
    Decision {
        verdict,
        score,
        agreement,
        approve,
        revise,
        reject,
        summary,
    }
}

/// The Job's `status.result`.
pub fn result(proposal: &Proposal, reviews: &[PersonaReview], decision: &Decision) -> Value {
    let reviews: Vec<Value> = reviews
        .iter()
        .map(|r| {
            json!({
                "persona": r.persona,
                "verdict": r.review.verdict,
                "score": r.review.score,
                "summary": cut(&r.review.summary, REVIEW_SUMMARY_CHARS),
                "concerns": r.review.concerns.iter().take(CONCERNS).map(|c| cut(c, CONCERN_CHARS)).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "decision": decision.verdict,
        "score": decision.score,
        "agreement": decision.agreement,
        "votes": {"approve": decision.approve, "revise": decision.revise, "reject": decision.reject},
        "title": cut(&proposal.title, TITLE_CHARS),
        "summary": decision.summary,
        "reviews": reviews,
    })
}

/// Pairs with the same verdict over all pairs.
fn pairwise_agreement(counts: &[usize], n: usize) -> f64 {
    if n < 2 {
        return 1.0;
    }
    let pairs = |k: usize| (k * k.saturating_sub(1)) as f64 / 2.0;
    counts.iter().map(|&k| pairs(k)).sum::<f64>() / pairs(n)
}

fn round(value: f64, scale: f64) -> f64 {
    (value * scale).round() / scale
}

fn capitalized(word: &str) -> String {
    let mut chars = word.chars();
    chars
        .next()
        .map(|first| first.to_uppercase().chain(chars).collect())
        .unwrap_or_default()
}

/// At most `chars` characters, with an ellipsis when something was cut.
fn cut(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        return text.to_owned();
    }
    let mut out: String = text.chars().take(chars.saturating_sub(1)).collect();
    out.push('…');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review(persona: &str, verdict: Verdict, score: f64) -> PersonaReview {
        PersonaReview {
            persona: persona.into(),
            review: Review {
                verdict,
                score,
                summary: format!("{persona} says so"),
                concerns: vec![],
            },
        }
    }

    fn verdict_of(reviews: &[(Verdict, f64)]) -> Verdict {
        let reviews: Vec<_> = reviews
            .iter()
            .enumerate()
            .map(|(i, (v, s))| review(&format!("p{i}"), *v, *s))
            .collect();
        decide(&reviews).verdict
    }

    use Verdict::{Approve, Reject, Revise};

    #[test]
    fn a_majority_of_approvals_with_a_good_score_approves() {
        assert_eq!(
            verdict_of(&[(Approve, 8.0), (Approve, 9.0), (Revise, 6.0)]),
            Approve
        );
    }

    #[test]
    fn one_rejection_blocks_approval() {
        assert_eq!(
            verdict_of(&[(Approve, 9.0), (Approve, 9.0), (Reject, 5.0)]),
            Revise
        );
    }

    #[test]
    fn approvals_with_a_low_mean_score_mean_revise() {
        assert_eq!(
            verdict_of(&[(Approve, 7.0), (Approve, 6.0), (Revise, 5.0)]),
            Revise
        );
    }

    #[test]
    fn a_majority_of_rejections_rejects() {
        assert_eq!(
            verdict_of(&[(Reject, 5.0), (Reject, 5.0), (Approve, 9.0)]),
            Reject
        );
    }

    #[test]
    fn a_mean_score_below_four_rejects() {
        assert_eq!(
            verdict_of(&[(Revise, 3.0), (Revise, 4.0), (Approve, 4.0)]),
            Reject
        );
    }

    #[test]
    fn a_split_panel_asks_for_revision() {
        assert_eq!(verdict_of(&[(Approve, 8.0), (Reject, 4.0)]), Revise);
        assert_eq!(verdict_of(&[(Approve, 8.0), (Revise, 7.0)]), Revise);
    }

    #[test]
    fn agreement_is_the_share_of_agreeing_pairs() {
        let unanimous = decide(&[review("a", Approve, 8.0), review("b", Approve, 8.0)]);
        assert_eq!(unanimous.agreement, 1.0);
        let two_of_three = decide(&[
            review("a", Approve, 8.0),
            review("b", Approve, 8.0),
            review("c", Reject, 2.0),
        ]);
        assert_eq!(two_of_three.agreement, 0.33);
        let all_differ = decide(&[
            review("a", Approve, 8.0),
            review("b", Revise, 6.0),
            review("c", Reject, 2.0),
        ]);
        assert_eq!(all_differ.agreement, 0.0);
        assert_eq!(decide(&[review("a", Revise, 5.0)]).agreement, 1.0);
    }

    #[test]
    fn the_summary_cites_every_persona() {
        let decision = decide(&[
            review("skeptic", Revise, 5.0),
            review("operator", Approve, 8.0),
            review("user", Revise, 6.5),
        ]);
        assert_eq!(decision.score, 6.5);
        assert_eq!(
            decision.summary,
            "Revise with a mean score of 6.5/10 (1 approve, 2 revise, 0 reject; agreement 0.33). \
             skeptic (revise, 5/10): skeptic says so. operator (approve, 8/10): operator says so. \
             user (revise, 6.5/10): user says so."
        );
    }

    #[test]
    fn the_result_is_small_even_for_verbose_reviewers() {
        let mut reviews = Vec::new();
        for i in 0..16 {
            let mut r = review(&format!("persona-{i}"), Revise, 5.0);
            r.review.summary = "word ".repeat(500);
            r.review.concerns = vec!["concern ".repeat(100); 20];
            reviews.push(r);
        }
        let proposal = Proposal {
            title: "t".repeat(1000),
            text: "p".repeat(100_000),
        };
        let value = result(&proposal, &reviews, &decide(&reviews));
        let size = value.to_string().len();
        assert!(size < 16 * 1024, "{size} bytes");
        assert_eq!(value["reviews"][0]["concerns"].as_array().unwrap().len(), 3);
        assert_eq!(
            value["votes"],
            json!({"approve": 0, "revise": 16, "reject": 0})
        );
    }

    #[test]
    fn cutting_counts_characters_not_bytes() {
        assert_eq!(cut("héllo wörld", 5), "héll…");
        assert_eq!(cut("short", 5), "short");
    }
}
