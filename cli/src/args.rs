//! The command line: kubectl's own flags (`-n`, `--context`, `-A`) and one
//! subcommand per thing a Drover user does, plus the pure parsing of a Job's
//! input from a file, inline JSON and `--set key=value` pairs.

use anyhow::{Context as _, bail};
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::{Map, Value};

/// Submit, watch and operate Drover Jobs (`kubectl drover ...`).
#[derive(Parser, Debug)]
#[command(name = "kubectl-drover", version)]
pub struct Cli {
    /// Namespace to use (default: the current context's).
    #[arg(short = 'n', long, global = true)]
    pub namespace: Option<String>,
    /// Kubeconfig context to use (default: the current one).
    #[arg(long, global = true)]
    pub context: Option<String>,
    /// List across all namespaces.
    #[arg(short = 'A', long, global = true)]
    pub all_namespaces: bool,
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a Job; with --watch, follow it live until it finishes.
    Submit(SubmitArgs),
    /// List Jobs (or show one) with phase, attempt, progress, age and why a Job waits.
    #[command(alias = "list")]
    Get(GetArgs),
    /// A Job's timeline from its status, conditions and Events.
    Describe { job: String },
    /// The worker pods' log lines of one Job's attempt.
    Logs(LogsArgs),
    /// Stop a Job (sets spec.cancel).
    Cancel { job: String },
    /// Run a Failed or Cancelled Job again with a fresh attempt budget.
    Retry(RerunArgs),
    /// Create a new Job with the same worker and input.
    Resubmit(RerunArgs),
    /// A fleet's dead-letter queue.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Per fleet: backlog, replicas, throughput and error rate.
    Fleet(FleetArgs),
    /// Finished Jobs from the operator's archive, after their TTL deleted them.
    History(HistoryArgs),
}

/// How `dlq list` prints.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum DlqOutput {
    /// A table for a person.
    #[default]
    Text,
    /// Every message, for scripts.
    Json,
    /// Only the ids, one a line (for `dlq replay`).
    Name,
}

/// How a result is printed.
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Output {
    /// For a person.
    #[default]
    Text,
    /// For scripts.
    Json,
}

#[derive(Args, Debug)]
pub struct SubmitArgs {
    /// The PipelineWorker that runs the Job.
    #[arg(short = 'w', long)]
    pub worker: String,
    /// A JSON file with the input (`-` reads stdin).
    #[arg(short = 'f', long = "filename")]
    pub file: Option<String>,
    /// The input as inline JSON.
    #[arg(long)]
    pub input: Option<String>,
    /// Sets one input key (dots for nesting); the value is JSON when it parses, else a string.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// The Job's name (default: generated from the worker's).
    #[arg(long)]
    pub name: Option<String>,
    /// Overrides the worker's retry.maxAttempts.
    #[arg(long)]
    pub max_attempts: Option<i32>,
    /// The Job's priority: higher is admitted first (default 0).
    #[arg(long, allow_negative_numbers = true)]
    pub priority: Option<i32>,
    #[command(flatten)]
    pub watch: WatchArgs,
}

#[derive(Args, Debug, Clone, Copy)]
pub struct WatchArgs {
    /// Follow the Job live until it finishes; exit 0 only when it Succeeded.
    #[arg(long)]
    pub watch: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct GetArgs {
    /// One Job (default: all).
    pub job: Option<String>,
    /// Only the Jobs of this PipelineWorker.
    #[arg(short = 'w', long)]
    pub worker: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    pub job: String,
    /// Keep following until the Job finishes.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// The attempt whose lines to show (default: the current one).
    #[arg(long, conflicts_with = "all_attempts")]
    pub attempt: Option<i32>,
    /// The lines of every attempt.
    #[arg(long)]
    pub all_attempts: bool,
    /// The JSON lines as the worker wrote them.
    #[arg(long)]
    pub raw: bool,
}

#[derive(Args, Debug)]
pub struct RerunArgs {
    pub job: String,
    #[command(flatten)]
    pub watch: WatchArgs,
}

#[derive(Subcommand, Debug)]
pub enum DlqCommand {
    /// What the fleet's dead-letter subscription holds (nothing is consumed).
    List(DlqArgs),
    /// Retry dead-lettered Jobs and republish foreign messages to the fleet's topic; acks what was replayed.
    Replay(ReplayArgs),
}

#[derive(Args, Debug)]
pub struct DlqArgs {
    /// The PipelineWorker whose dead letters to read.
    #[arg(short = 'w', long)]
    pub worker: String,
    /// The project of queues that name none (as the operator's PUBSUB_PROJECT_ID).
    #[arg(long, env = "PUBSUB_PROJECT_ID", default_value = "drover-local")]
    pub project: String,
    /// How long to wait for one more message before the read is complete.
    #[arg(long, default_value_t = 2)]
    pub quiet_seconds: u64,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: DlqOutput,
}

#[derive(Args, Debug)]
pub struct ReplayArgs {
    #[command(flatten)]
    pub dlq: DlqArgs,
    /// Replay every message.
    #[arg(long, conflicts_with = "ids")]
    pub all: bool,
    /// Message ids (from `dlq list`); the read waits up to 20 s for each.
    pub ids: Vec<String>,
}

#[derive(Args, Debug)]
pub struct FleetArgs {
    /// Only this PipelineWorker.
    #[arg(short = 'w', long)]
    pub worker: Option<String>,
    /// Redraw every 2 s, like `top`.
    #[arg(long)]
    pub watch: bool,
    /// Throughput and error rate over this many minutes.
    #[arg(long, default_value_t = 5)]
    pub window_minutes: u64,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Only the Jobs of this PipelineWorker.
    #[arg(short = 'w', long)]
    pub worker: Option<String>,
    /// Only Jobs that finished this recently (`90s`, `15m`, `24h`, `7d`).
    #[arg(long, value_parser = crate::history::parse_since)]
    pub since: Option<std::time::Duration>,
    /// Only Jobs that ended in this phase (Succeeded, Failed, Cancelled).
    #[arg(long, value_parser = crate::history::parse_phase)]
    pub phase: Option<drover_crds::JobPhase>,
    /// At most this many Jobs, newest first (default 100, at most 1000).
    #[arg(long)]
    pub limit: Option<u32>,
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Output,
    /// Namespace of the operator (the Helm release's).
    #[arg(
        long,
        env = "DROVER_OPERATOR_NAMESPACE",
        default_value = "drover-system"
    )]
    pub operator_namespace: String,
    /// The operator's archive Service (`<release fullname>-archive`).
    #[arg(long, env = "DROVER_ARCHIVE_SERVICE", default_value = "drover-archive")]
    pub archive_service: String,
    /// Read the archive endpoint at this URL instead of through the
    /// apiserver (e.g. after `kubectl port-forward`).
    #[arg(long, env = "DROVER_ARCHIVE_URL")]
    pub archive_url: Option<String>,
}

/// The Job input from `-f`'s text, `--input` and `--set` pairs, applied in
/// that order.
pub fn build_input(
    file: Option<&str>,
    inline: Option<&str>,
    sets: &[String],
) -> anyhow::Result<Value> {
    let mut input = Value::Object(Map::new());
    for (text, what) in [(file, "the input file"), (inline, "--input")] {
        let Some(text) = text else { continue };
        let parsed: Value =
            serde_json::from_str(text).with_context(|| format!("{what} is not JSON"))?;
        let Value::Object(fields) = parsed else {
            bail!("{what} must be a JSON object");
        };
        input
            .as_object_mut()
            .expect("made an object above")
            .extend(fields);
    }
    for pair in sets {
        let (key, value) = parse_set(pair)?;
        set_path(&mut input, &key, value)?;
    }
    Ok(input)
}

/// `a.b=3` as (`a.b`, 3); a value that is not JSON is a string.
pub fn parse_set(pair: &str) -> anyhow::Result<(String, Value)> {
    let Some((key, value)) = pair.split_once('=') else {
        bail!("--set {pair:?}: expected KEY=VALUE");
    };
    if key.is_empty() || key.split('.').any(str::is_empty) {
        bail!("--set {pair:?}: the key is empty or has an empty part");
    }
    let value = serde_json::from_str(value).unwrap_or_else(|_| Value::String(value.to_owned()));
    Ok((key.to_owned(), value))
}

fn set_path(target: &mut Value, key: &str, value: Value) -> anyhow::Result<()> {
    let mut parts: Vec<&str> = key.split('.').collect();
    let last = parts.pop().unwrap_or(key);
    let mut here = target;
    for part in parts {
        let Value::Object(map) = here else {
            bail!("--set {key}: {part:?} is inside a value that is not an object");
        };
        here = map
            .entry(part.to_owned())
            .or_insert_with(|| Value::Object(Map::new()));
    }
    let Value::Object(map) = here else {
        bail!("--set {key}: its parent is not an object");
    };
    map.insert(last.to_owned(), value);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn set_values_are_json_when_they_parse_and_strings_otherwise() {
        assert_eq!(parse_set("n=3").unwrap(), ("n".into(), json!(3)));
        assert_eq!(parse_set("ok=true").unwrap(), ("ok".into(), json!(true)));
        assert_eq!(
            parse_set("url=gs://b/x.wav").unwrap(),
            ("url".into(), json!("gs://b/x.wav"))
        );
        assert_eq!(parse_set("s=\"7\"").unwrap(), ("s".into(), json!("7")));
        assert_eq!(parse_set("eq=a=b").unwrap(), ("eq".into(), json!("a=b")));
    }

    #[test]
    fn a_set_without_a_key_or_equals_sign_is_refused() {
        assert!(parse_set("novalue").is_err());
        assert!(parse_set("=3").is_err());
        assert!(parse_set("a..b=3").is_err());
    }

    #[test]
    fn file_then_inline_then_sets_with_dotted_keys_nest() {
        let input = build_input(
            Some(r#"{"a": 1, "b": {"c": 2}}"#),
            Some(r#"{"a": 5}"#),
            &["b.d=x".into(), "e.f.g=[1]".into()],
        )
        .unwrap();
        assert_eq!(
            input,
            json!({"a": 5, "b": {"c": 2, "d": "x"}, "e": {"f": {"g": [1]}}})
        );
    }

    #[test]
    fn input_that_is_not_an_object_is_refused() {
        assert!(build_input(Some("[1]"), None, &[]).is_err());
        assert!(build_input(None, Some("nope"), &[]).is_err());
        assert!(build_input(None, None, &["a=1".into(), "a.b=2".into()]).is_err());
    }

    #[test]
    fn kubectl_flags_work_before_and_after_the_subcommand() {
        let cli = Cli::try_parse_from([
            "kubectl-drover",
            "-n",
            "team",
            "submit",
            "-w",
            "sleeper",
            "--set",
            "durationMillis=5",
            "--watch",
            "-o",
            "json",
            "--context",
            "dev",
        ])
        .unwrap();
        assert_eq!(cli.namespace.as_deref(), Some("team"));
        assert_eq!(cli.context.as_deref(), Some("dev"));
        let Command::Submit(submit) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert!(submit.watch.watch);
        assert_eq!(submit.watch.output, Output::Json);
        assert_eq!(submit.set, ["durationMillis=5"]);
    }

    #[test]
    fn submit_takes_a_priority_and_history_its_filters() {
        let cli = Cli::try_parse_from(["kubectl-drover", "submit", "-w", "w", "--priority", "-5"])
            .unwrap();
        let Command::Submit(submit) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert_eq!(submit.priority, Some(-5));
        let cli = Cli::try_parse_from([
            "kubectl-drover",
            "-A",
            "history",
            "-w",
            "sleeper",
            "--since",
            "24h",
            "--phase",
            "Failed",
        ])
        .unwrap();
        let Command::History(history) = cli.command else {
            panic!("{:?}", cli.command)
        };
        assert!(cli.all_namespaces);
        assert_eq!(history.worker.as_deref(), Some("sleeper"));
        assert_eq!(history.since, Some(std::time::Duration::from_secs(86_400)));
        assert_eq!(history.phase, Some(drover_crds::JobPhase::Failed));
        let bad = Cli::try_parse_from(["kubectl-drover", "history", "--phase", "Running"]);
        assert!(bad.is_err());
    }

    #[test]
    fn replay_takes_ids_or_all_but_not_both() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from([&["kubectl-drover", "dlq", "replay", "-w", "w"], args].concat())
        };
        assert!(parse(&["--all"]).is_ok());
        assert!(parse(&["1", "2"]).is_ok());
        assert!(parse(&["--all", "1"]).is_err());
    }
}
