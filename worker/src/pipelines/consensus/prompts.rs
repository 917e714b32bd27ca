//! The messages sent to the model: one conversation to expand the input into
//! a proposal, one per persona to review it, and the repair request that
//! follows an answer which failed its schema check.

use drover_crds::input::ConsensusInput;
use drover_crds::pipeline_worker::Persona;

use super::client::{ChatMessage, Role};
use super::schema::{PROPOSAL, Proposal, REVIEW};

/// The first words of the expand system prompt (tests find the call by them).
pub const EXPAND_OPENING: &str = "You turn a short idea into a complete proposal";

/// How a review system prompt names its persona (tests find calls by it).
pub fn persona_marker(name: &str) -> String {
    format!("You are the reviewer named \"{name}\".")
}

pub fn expand(input: &ConsensusInput) -> Vec<ChatMessage> {
    let system = format!(
        "{EXPAND_OPENING} that several reviewers will judge. State the problem, the plan, \
         what it costs, its risks and how success will be measured. Keep what the author \
         said; do not invent facts beyond the context. Answer with one JSON object and \
         nothing else, shaped like this:\n{}",
        PROPOSAL.prompt_shape()
    );
    let mut user = format!("Idea:\n{}", input.text.trim());
    if let Some(context) = input.context.as_deref().filter(|c| !c.trim().is_empty()) {
        user.push_str(&format!("\n\nContext:\n{}", context.trim()));
    }
    vec![
        ChatMessage::new(Role::System, system),
        ChatMessage::new(Role::User, user),
    ]
}

pub fn review(persona: &Persona, proposal: &Proposal, context: Option<&str>) -> Vec<ChatMessage> {
    let system = format!(
        "{}\n\n{} Review the proposal the user sends from your point of view. Approve it \
         if it should go ahead as written, ask for a revision if it could work with \
         changes, reject it if it should not be done. Score it from 0 (worst) to 10 \
         (best). Answer with one JSON object and nothing else, shaped like this:\n{}",
        persona.prompt.trim(),
        persona_marker(&persona.name),
        REVIEW.prompt_shape(),
    );
    let mut user = format!("Proposal: {}\n\n{}", proposal.title, proposal.text);
    if let Some(context) = context.filter(|c| !c.trim().is_empty()) {
        user.push_str(&format!("\n\nContext:\n{}", context.trim()));
    }
    vec![
        ChatMessage::new(Role::System, system),
        ChatMessage::new(Role::User, user),
    ]
}

/// The conversation again, with the unusable answer and what is wrong with it.
pub fn repair(conversation: &[ChatMessage], answer: &str, problem: &str) -> Vec<ChatMessage> {
    let mut messages = conversation.to_vec();
    messages.push(ChatMessage::new(Role::Assistant, answer));
    messages.push(ChatMessage::new(
        Role::User,
        format!(
            "That answer cannot be used: {problem}. Answer again with only the JSON object \
             in the shape given above, with no other text."
        ),
    ));
    messages
}

#[cfg(test)]
mod tests {
    use super::*;

    fn persona() -> Persona {
        Persona {
            name: "skeptic".into(),
            prompt: "You look for the weakest assumption.".into(),
        }
    }

    fn proposal() -> Proposal {
        Proposal {
            title: "Cache billing reads".into(),
            text: "Put a read-through cache in front of billing.".into(),
        }
    }

    #[test]
    fn expand_carries_the_idea_and_the_context_and_asks_for_json() {
        let messages = expand(&ConsensusInput {
            text: " Cache billing reads ".into(),
            context: Some("Reads are 90% of load.".into()),
        });
        assert_eq!(messages.len(), 2);
        assert!(messages[0].content.starts_with(EXPAND_OPENING));
        assert!(messages[0].content.contains(&PROPOSAL.prompt_shape()));
        assert_eq!(
            messages[1].content,
            "Idea:\nCache billing reads\n\nContext:\nReads are 90% of load."
        );
    }

    #[test]
    fn expand_without_context_says_nothing_of_it() {
        let messages = expand(&ConsensusInput {
            text: "x".into(),
            context: Some("  ".into()),
        });
        assert_eq!(messages[1].content, "Idea:\nx");
    }

    #[test]
    fn a_review_speaks_as_the_persona_about_the_proposal() {
        let messages = review(&persona(), &proposal(), Some("Reads are 90% of load."));
        assert_eq!(messages[0].role, Role::System);
        assert!(
            messages[0]
                .content
                .starts_with("You look for the weakest assumption.")
        );
        assert!(messages[0].content.contains(&persona_marker("skeptic")));
        assert!(messages[0].content.contains(&REVIEW.prompt_shape()));
        assert!(
            messages[1]
                .content
                .starts_with("Proposal: Cache billing reads\n\n")
        );
        assert!(
            messages[1]
                .content
                .ends_with("Context:\nReads are 90% of load.")
        );
    }

    #[test]
    fn a_repair_replays_the_conversation_with_the_problem() {
        let first = review(&persona(), &proposal(), None);
        let messages = repair(&first, "not json", "the answer is not valid JSON");
        assert_eq!(messages[..2], first[..]);
        assert_eq!(messages[2], ChatMessage::new(Role::Assistant, "not json"));
        assert_eq!(messages[3].role, Role::User);
        assert!(
            messages[3]
                .content
                .starts_with("That answer cannot be used: the answer is not valid JSON.")
        );
    }
}
