//! `kubectl-drover` end to end, run as the built binary against the real
//! control plane, operator, emulator and worker processes, the way a user
//! runs it: with a kubeconfig, `-n`, and the emulator's environment.
//! * `retry` of a Failed Job gives it a fresh attempt budget: it succeeds on
//!   the next attempt, its history (attempt numbers, Events) kept;
//! * `cancel` stops a running Job;
//! * `dlq replay` retries a dead-lettered Job and republishes a foreign
//!   message to the fleet's topic, where it is adopted; what was replayed
//!   is acked, so the dead-letter queue is empty afterwards;
//! * `logs` shows only the chosen Job's lines.

use std::path::PathBuf;
use std::process::Output;
use std::time::Duration;

use drover_crds::{Job, JobPhase, JobStatus};
use drover_e2e::drover::{DroverTest, PUBSUB_PROJECT, binary, drover_test};
use drover_e2e::wait;
use drover_queue::{PubSubEndpoint, topic_path};
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use google_cloud_pubsub::model::Message;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};

const MINUTE: Duration = Duration::from_secs(60);

struct Fixture {
    test: DroverTest,
    effects: PathBuf,
}

impl Fixture {
    /// A namespace with the fleet `sleeper`: two attempts per Job, short
    /// backoff, a dead-letter topic.
    async fn new(prefix: &str) -> Self {
        let test = drover_test(prefix).await;
        let effects = test
            .env
            .control_plane
            .state_dir()
            .join("effects")
            .join(&test.namespace);
        std::fs::create_dir_all(&effects).expect("effects dir");
        let fleet = PipelineWorkerBuilder::sleep("sleeper")
            .queue(&test.unique("jobs"), &test.unique("jobs-sub"))
            .dead_letter_topic(&test.unique("dead"))
            .ack_deadline_seconds(10)
            .concurrency(4)
            .replicas(1, 2)
            .max_attempts(2)
            .backoff(1, 1.0, 1);
        test.apply_fleet(fleet.build()).await;
        Self { test, effects }
    }

    fn jobs(&self) -> Api<Job> {
        self.test.api()
    }

    async fn create(&self, name: &str, mut input: Value) -> Job {
        input["effectsDir"] = json!(self.effects.display().to_string());
        self.test
            .create_job(JobBuilder::new(name, "sleeper").input(input).build())
            .await
    }

    /// Runs `kubectl-drover -n <namespace> args...` with the test's
    /// kubeconfig and emulator, as a user's shell would.
    async fn cli(&self, args: &[&str]) -> Output {
        let path = binary("kubectl-drover").unwrap_or_else(|e| panic!("{e}"));
        let output = tokio::process::Command::new(&path)
            .arg("-n")
            .arg(&self.test.namespace)
            .args(args)
            .env("KUBECONFIG", self.test.env.control_plane.kubeconfig_path())
            .env("PUBSUB_EMULATOR_HOST", self.test.env.pubsub.host_port())
            .env("PUBSUB_PROJECT_ID", PUBSUB_PROJECT)
            .output();
        let output = tokio::time::timeout(2 * MINUTE, output)
            .await
            .unwrap_or_else(|_| panic!("kubectl-drover {args:?} did not finish in 2 min"))
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", path.display()));
        eprintln!(
            "$ kubectl-drover {}\n{}{}(exit {:?})",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr),
            output.status.code()
        );
        output
    }

    fn effects(&self) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(&self.effects)
            .expect("effects dir")
            .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect();
        names.sort();
        names
    }

    async fn failed(&self, name: &str) -> drover_crds::JobStatus {
        let status = wait::job_finished(&self.jobs(), name, MINUTE).await;
        assert_eq!(status.phase, JobPhase::Failed, "{status:?}");
        status
    }
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn json_out(output: &Output) -> Value {
    serde_json::from_slice(&output.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", stdout(output)))
}

#[tokio::test]
async fn retry_of_a_failed_job_succeeds_on_the_next_attempt_and_keeps_its_history() {
    let f = Fixture::new("cli-retry").await;
    f.create(
        "flaky",
        json!({"durationMillis": 10, "failOnAttempts": [1, 2]}),
    )
    .await;
    let failed = f.failed("flaky").await;
    assert_eq!(failed.attempt, 2);
    assert_eq!(failed.error.expect("why").reason, "MaxAttemptsExceeded");

    // A Succeeded Job is not retried.
    f.create("fine", json!({"durationMillis": 10})).await;
    assert_eq!(
        wait::job_finished(&f.jobs(), "fine", MINUTE).await.phase,
        JobPhase::Succeeded
    );
    let refused = f.cli(&["retry", "fine"]).await;
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("only a Failed or Cancelled Job"),
        "{refused:?}"
    );

    let retried = f.cli(&["retry", "flaky", "--watch", "-o", "json"]).await;
    assert!(retried.status.success(), "{retried:?}");
    // `-o json` prints the outcome with the status's own field names.
    let outcome: JobStatus = serde_json::from_value(json_out(&retried)).expect("an outcome");
    assert_eq!((outcome.phase, outcome.attempt), (JobPhase::Succeeded, 3));

    let job = f.jobs().get("flaky").await.expect("the Job");
    let status = job.status.expect("status");
    assert_eq!(
        (status.attempt, status.attempt_base, status.retries),
        (3, 2, 1)
    );
    assert_eq!(job.spec.retries, 1);
    assert_eq!(
        f.effects(),
        [
            format!("{}_fine_1", f.test.namespace),
            format!("{}_flaky_3", f.test.namespace)
        ]
    );

    // The history: each attempt from the worker pods' logs, the failure that
    // was retried, the retry, the success.
    let described = stdout(&f.cli(&["describe", "flaky"]).await);
    for shown in [
        "attempt 1 failed, retryable: the input asked attempt 1 to fail (Told)",
        "attempt 2 failed, retryable: the input asked attempt 2 to fail (Told)",
        "MaxAttemptsExceeded",
        "Retried",
        "attempt 3 started on pod sleeper-worker-",
        "attempt 3 succeeded",
        "finished: Succeeded",
    ] {
        assert!(
            described.contains(shown),
            "describe lacks {shown:?}:\n{described}"
        );
    }
    let listed = stdout(&f.cli(&["get"]).await);
    let row = listed
        .lines()
        .find(|l| l.starts_with("flaky "))
        .unwrap_or_else(|| panic!("{listed}"));
    assert!(row.contains("Succeeded") && row.contains(" 3 "), "{row}");
}

#[tokio::test]
async fn cancel_stops_a_running_job() {
    let f = Fixture::new("cli-cancel").await;
    f.create("long", json!({"durationMillis": 120_000})).await;
    wait::job_in_phase(&f.jobs(), "long", JobPhase::Running, MINUTE).await;

    let cancelled = f.cli(&["cancel", "long"]).await;
    assert!(cancelled.status.success(), "{cancelled:?}");
    let status = wait::job_finished(&f.jobs(), "long", Duration::from_secs(20)).await;
    assert_eq!(status.phase, JobPhase::Cancelled, "{status:?}");
    assert!(status.claim.is_none());
    assert!(f.effects().is_empty(), "a cancelled Job left an effect");

    // And a cancelled Job can be retried: the cancel is lifted with it.
    let retried = f.cli(&["retry", "long"]).await;
    assert!(retried.status.success(), "{retried:?}");
    let job = wait::job_in_phase(&f.jobs(), "long", JobPhase::Running, MINUTE).await;
    assert!(!job.spec.cancel);
    assert_eq!(job.status.expect("status").attempt, 2);
    assert!(f.cli(&["cancel", "long"]).await.status.success());
    let status = wait::job_finished(&f.jobs(), "long", Duration::from_secs(20)).await;
    assert_eq!(status.phase, JobPhase::Cancelled, "{status:?}");
}

#[tokio::test]
async fn dlq_replay_retries_a_dead_lettered_job_and_republishes_a_foreign_message() {
    let f = Fixture::new("cli-dlq").await;
    // Both attempts fail: the Job gives up and goes to the dead-letter topic.
    f.create(
        "doomed",
        json!({"durationMillis": 10, "failOnAttempts": [1, 2]}),
    )
    .await;
    f.failed("doomed").await;
    // A foreign message that went to the dead-letter topic (as Pub/Sub's own
    // dead-letter policy sends one no worker could adopt in 20 deliveries).
    let pubsub = PubSubEndpoint::emulator(f.test.env.pubsub.host_port());
    let dead = topic_path(PUBSUB_PROJECT, &f.test.unique("dead"));
    let foreign = br#"{"durationMillis": 5}"#.to_vec();
    pubsub
        .publisher(&dead)
        .await
        .expect("publisher")
        .publish(
            Message::new()
                .set_data(foreign)
                .set_attributes([("source", "billing")]),
        )
        .await
        .expect("the foreign message is dead-lettered");

    let listed = wait::until("both dead letters to be listed", MINUTE, || async {
        let out = f.cli(&["dlq", "list", "-w", "sleeper", "-o", "json"]).await;
        let letters = json_out(&out);
        match letters.as_array() {
            Some(all) if all.len() == 2 => Ok(all.clone()),
            _ => Err(letters.to_string()),
        }
    })
    .await;
    let reasons: Vec<&str> = listed.iter().filter_map(|l| l["reason"].as_str()).collect();
    assert!(reasons.contains(&"MaxAttemptsExceeded"), "{listed:?}");
    // Listing consumed nothing: both are read again at once. (On the first
    // cut this failed one run in three: the message handed back was
    // redelivered to the closing stream and stayed out of sight for its lease.)
    let again = json_out(&f.cli(&["dlq", "list", "-w", "sleeper", "-o", "json"]).await);
    assert_eq!(again.as_array().map(Vec::len), Some(2), "{again}");

    let ids: Vec<&str> = listed.iter().filter_map(|l| l["id"].as_str()).collect();
    let replayed = f
        .cli(&[&["dlq", "replay", "-w", "sleeper"], ids.as_slice()].concat())
        .await;
    assert!(replayed.status.success(), "{replayed:?}");
    assert!(
        stdout(&replayed).contains("replayed 2 of 2"),
        "{replayed:?}"
    );

    // The Job runs again with a fresh budget: attempt 3 does not fail.
    // (Still Failed until the operator takes the retry up.)
    let job = wait::job_in_phase(&f.jobs(), "doomed", JobPhase::Succeeded, MINUTE).await;
    let status = job.status.expect("status");
    assert_eq!((status.attempt, status.retries), (3, 1), "{status:?}");
    // The foreign message became a Job of the fleet, which ran.
    let adopted = wait::until("the adopted Job to succeed", MINUTE, || async {
        let list = f
            .jobs()
            .list(&ListParams::default())
            .await
            .map_err(|e| e.to_string())?;
        list.items
            .into_iter()
            .find(|j| j.name_any().starts_with("adopted-") && j.phase() == JobPhase::Succeeded)
            .ok_or_else(|| "none yet".to_owned())
    })
    .await;
    assert_eq!(adopted.spec.input, json!({"durationMillis": 5}));
    // What was replayed is acked: nothing comes back, not even after the
    // lease of a copy in flight.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let empty = json_out(&f.cli(&["dlq", "list", "-w", "sleeper", "-o", "json"]).await);
    assert_eq!(empty, json!([]), "what was replayed is acked");
}

/// The `fields.event` of each JSON line.
fn events_of(lines: &str) -> Vec<String> {
    lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter_map(|v| v["fields"]["event"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test]
async fn logs_show_only_the_chosen_jobs_lines_of_the_chosen_attempt() {
    let f = Fixture::new("cli-logs").await;
    // Two Jobs at once on the fleet's pods; `twice` fails its first attempt.
    f.create(
        "twice",
        json!({"durationMillis": 300, "failOnAttempts": [1]}),
    )
    .await;
    f.create("other", json!({"durationMillis": 300})).await;
    for name in ["twice", "other"] {
        let status = wait::job_finished(&f.jobs(), name, MINUTE).await;
        assert_eq!(status.phase, JobPhase::Succeeded, "{name}: {status:?}");
    }
    let ns = f.test.namespace.clone();
    let belongs_to = |line: &Value, job: &str, attempt: i64| {
        let scopes = [&line["fields"], &line["span"]];
        scopes.iter().any(|s| s["job"] == job)
            && scopes
                .iter()
                .all(|s| s["attempt"].is_null() || s["attempt"] == attempt)
            && scopes
                .iter()
                .all(|s| s["namespace"].is_null() || s["namespace"] == ns.as_str())
    };

    // The current attempt (2) by default: its whole life, and nothing else.
    let current = stdout(&f.cli(&["logs", "twice", "--raw"]).await);
    let events = events_of(&current);
    for wanted in [
        "job_started",
        "step_started",
        "step_completed",
        "job_completed",
    ] {
        assert!(
            events.iter().any(|e| e == wanted),
            "no {wanted}: {events:?}"
        );
    }
    for line in current.lines() {
        let line: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(
            belongs_to(&line, "twice", 2),
            "a line of another Job or attempt: {line}"
        );
    }
    // Attempt 1: the failure, and only that attempt's lines.
    let first = stdout(&f.cli(&["logs", "twice", "--attempt", "1", "--raw"]).await);
    assert!(
        events_of(&first)
            .iter()
            .any(|e| e == "job_failed" || e == "step_failed"),
        "{first}"
    );
    for line in first.lines() {
        let line: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        assert!(belongs_to(&line, "twice", 1), "{line}");
    }
    // The other Job's own lines are there, in the same pods' logs.
    let other = stdout(&f.cli(&["logs", "other", "--raw"]).await);
    assert!(
        events_of(&other).iter().any(|e| e == "job_completed"),
        "{other}"
    );
    assert!(!other.contains("\"twice\""), "{other}");

    // Following a running Job ends when it finishes, with its last lines.
    f.create("slow", json!({"durationMillis": 3000})).await;
    wait::job_in_phase(&f.jobs(), "slow", JobPhase::Running, MINUTE).await;
    let followed = f.cli(&["logs", "slow", "-f"]).await;
    assert!(followed.status.success(), "{followed:?}");
    let text = stdout(&followed);
    assert!(text.contains("job_completed"), "{text}");
    assert!(
        !text.contains("twice") && !text.contains(" other"),
        "{text}"
    );
}

/// The README's walkthrough of the plugin, run as written with bash in the
/// repository root and the variables `.drover-sandbox/env` exports
/// (`DROVER_CLI`, its directory on `PATH`, so `kubectl drover` finds it).
#[tokio::test]
async fn the_readme_walkthrough_runs_as_written() {
    let (env, _drover) = drover_e2e::drover::shared_drover().await;
    let script =
        drover_e2e::observe::readme_block("cli-walkthrough").unwrap_or_else(|e| panic!("{e}"));
    let cli = binary("kubectl-drover").unwrap_or_else(|e| panic!("{e}"));
    let cli_dir = cli.parent().expect("the CLI's directory");
    let path = format!(
        "{}:{}",
        cli_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let home = env.control_plane.state_dir().join("cli-readme-home");
    std::fs::create_dir_all(&home).expect("home");
    let output = tokio::process::Command::new("bash")
        .args(["-euo", "pipefail", "-c", &format!("set -x\n{script}")])
        .current_dir(drover_e2e::workspace_root())
        .env_clear()
        .env("PATH", path)
        .env("HOME", &home)
        .env("KUBECONFIG", env.control_plane.kubeconfig_path())
        .env("KUBECTL", &env.binaries.kubectl)
        .env("DROVER_CLI", &cli)
        .env("PUBSUB_EMULATOR_HOST", env.pubsub.host_port())
        .env("PUBSUB_PROJECT_ID", PUBSUB_PROJECT)
        .stdin(std::process::Stdio::null())
        .output();
    let output = tokio::time::timeout(5 * MINUTE, output)
        .await
        .expect("the walkthrough ends within 5 minutes")
        .expect("bash runs");
    let transcript = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    eprintln!("README cli-walkthrough:\n{transcript}");
    assert!(
        output.status.success(),
        "the walkthrough failed ({}):\n{transcript}",
        output.status
    );
    for shown in [
        "job.drover.dev/hello created",
        "flaky failed, as it was told to",
        "MaxAttemptsExceeded",
        "job flaky retried (retry 1)",
        "replayed 1 of 1 dead letters",
        "Retried",
        "attempt 4",
        "cancel requested",
        "\"phase\": \"Succeeded\"",
        "sleeper",
    ] {
        assert!(
            transcript.contains(shown),
            "the walkthrough does not show {shown:?}:\n{transcript}"
        );
    }
}
