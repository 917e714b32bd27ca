//! What each Job and fleet subcommand does against the cluster; the text
//! they print comes from `render`, `timeline`, `logs` and `fleet`.

use std::io::IsTerminal as _;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context as _, bail};
use drover_crds::{Job, JobPhase, JobSpec, PipelineWorker};
use futures::{AsyncBufReadExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ListParams, LogParams, Patch, PatchParams, PostParams};
use kube::{Api, ResourceExt};
use serde_json::json;

use crate::args::{FleetArgs, GetArgs, LogsArgs, Output, RerunArgs, SubmitArgs, WatchArgs};
use crate::cluster::Target;
use crate::logs::{self, Wanted};
use crate::{fleet, render, timeline, watch};

/// The label the operator puts on a fleet's worker pods.
pub const WORKER_LABEL: &str = "drover.dev/pipeline-worker";
/// The worker pods' container.
const WORKER_CONTAINER: &str = "worker";
/// The annotation naming the Job a resubmitted one was copied from.
pub const RESUBMITTED_FROM: &str = "drover.dev/resubmitted-from";

fn print(text: &str) {
    println!("{text}");
}

fn print_json(value: &impl serde::Serialize) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub async fn submit(target: &Target, args: &SubmitArgs) -> anyhow::Result<ExitCode> {
    let file = match args.file.as_deref() {
        Some("-") => Some(std::io::read_to_string(std::io::stdin()).context("reading stdin")?),
        Some(path) => {
            Some(std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?)
        }
        None => None,
    };
    let input = crate::args::build_input(file.as_deref(), args.input.as_deref(), &args.set)?;
    let spec: JobSpec = serde_json::from_value(json!({
        "worker": args.worker,
        "input": input,
        "maxAttempts": args.max_attempts,
        "priority": args.priority,
    }))
    .context("building the Job")?;
    let mut job = Job::new(args.name.as_deref().unwrap_or_default(), spec);
    if args.name.is_none() {
        job.metadata.name = None;
        job.metadata.generate_name = Some(format!("{}-", args.worker));
    }
    create_and_follow(target, job, args.watch).await
}

async fn create_and_follow(
    target: &Target,
    job: Job,
    watch: WatchArgs,
) -> anyhow::Result<ExitCode> {
    let jobs: Api<Job> = target.api();
    let created = jobs
        .create(&PostParams::default(), &job)
        .await
        .context("creating the Job")?;
    let name = created.name_any();
    if !watch.watch {
        match watch.output {
            Output::Json => print_json(&render::outcome_json(&created))?,
            Output::Text => print(&format!("job.drover.dev/{name} created")),
        }
        return Ok(ExitCode::SUCCESS);
    }
    if watch.output == Output::Text {
        print(&format!("job.drover.dev/{name} created"));
    }
    follow(&jobs, &name, watch.output).await
}

/// The live view until the Job finishes, then its outcome.
async fn follow(jobs: &Api<Job>, name: &str, output: Output) -> anyhow::Result<ExitCode> {
    let live = output == Output::Text && std::io::stdout().is_terminal();
    // With -o json stdout carries only the outcome: the view goes nowhere.
    let finished = if output == Output::Json {
        wait_finished(jobs, name).await?
    } else {
        watch::until_finished(jobs, name, live).await?
    };
    match output {
        Output::Json => print_json(&render::outcome_json(&finished))?,
        Output::Text => print(&render::outcome(&finished)),
    }
    Ok(if finished.phase() == JobPhase::Succeeded {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn wait_finished(jobs: &Api<Job>, name: &str) -> anyhow::Result<Job> {
    use kube::runtime::{WatchStreamExt, watcher};
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut stream = watcher(jobs.clone(), config).applied_objects().boxed();
    while let Some(job) = stream
        .try_next()
        .await
        .with_context(|| format!("watching Job {name}"))?
    {
        if job.phase().is_terminal() {
            return Ok(job);
        }
    }
    bail!("the watch of Job {name} ended")
}

pub async fn get(target: &Target, args: &GetArgs) -> anyhow::Result<ExitCode> {
    let now = Timestamp::now();
    let mut jobs: Vec<Job> = match &args.job {
        Some(name) => vec![
            target
                .api::<Job>()
                .get(name)
                .await
                .with_context(|| format!("Job {name}"))?,
        ],
        None => {
            target
                .list_api::<Job>()
                .list(&ListParams::default())
                .await
                .context("listing Jobs")?
                .items
        }
    };
    if let Some(worker) = &args.worker {
        jobs.retain(|j| &j.spec.worker == worker);
    }
    jobs.sort_by_key(|j| {
        (
            j.namespace(),
            j.creation_timestamp().map(|t| t.0),
            j.name_any(),
        )
    });
    if args.output == Output::Json {
        print_json(&jobs)?;
        return Ok(ExitCode::SUCCESS);
    }
    if jobs.is_empty() {
        print("No Jobs found.");
        return Ok(ExitCode::SUCCESS);
    }
    let wide = target.all_namespaces;
    let rows: Vec<_> = jobs.iter().map(|j| render::job_row(j, now, wide)).collect();
    print(&render::table(&render::job_headers(wide), &rows));
    Ok(ExitCode::SUCCESS)
}

pub async fn describe(target: &Target, name: &str) -> anyhow::Result<ExitCode> {
    let job = target
        .api::<Job>()
        .get(name)
        .await
        .with_context(|| format!("Job {name}"))?;
    let events: Api<Event> = target.api();
    let all = events
        .list(&ListParams::default())
        .await
        .context("listing Events")?
        .items;
    let status = job.status.clone().unwrap_or_default();
    print(&format!(
        "Name:      {}\nNamespace: {}\nWorker:    {}\nPhase:     {:?}\nAttempt:   {} ({} since the last retry)\nProgress:  {}%",
        job.name_any(),
        job.namespace().unwrap_or_default(),
        job.spec.worker,
        status.phase,
        status.attempt,
        status.attempts_used(),
        status.progress,
    ));
    let waiting = render::waiting_reason(&job, Timestamp::now());
    if !waiting.is_empty() {
        print(&format!("Waiting:   {waiting}"));
    }
    print("Timeline:");
    let lines = job_log_lines(target, &job, None).await;
    let history = timeline::history(lines.iter().map(|(_, line)| line.as_str()));
    let entries = timeline::build(&job, &timeline::about(&job, &all), &history);
    for line in timeline::render(&entries).lines() {
        print(&format!("  {line}"));
    }
    if job.phase().is_terminal() {
        print(&format!("Outcome:   {}", render::outcome(&job)));
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn cancel(target: &Target, name: &str) -> anyhow::Result<ExitCode> {
    let patch = json!({"spec": {"cancel": true}});
    target
        .api::<Job>()
        .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("cancelling Job {name}"))?;
    print(&format!("job.drover.dev/{name} cancel requested"));
    Ok(ExitCode::SUCCESS)
}

/// Raises `spec.retries` of a Failed or Cancelled Job, conditioned on the
/// version read, so two retries at once make one.
pub async fn retry_job(jobs: &Api<Job>, name: &str) -> anyhow::Result<Job> {
    let job = jobs
        .get(name)
        .await
        .with_context(|| format!("Job {name}"))?;
    let phase = job.phase();
    if !matches!(phase, JobPhase::Failed | JobPhase::Cancelled) {
        bail!("Job {name} is {phase:?}: only a Failed or Cancelled Job is retried");
    }
    let patch = json!({
        "metadata": {"resourceVersion": job.resource_version()},
        "spec": {"retries": job.spec.retries + 1, "cancel": false},
    });
    jobs.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("retrying Job {name}"))
}

pub async fn retry(target: &Target, args: &RerunArgs) -> anyhow::Result<ExitCode> {
    let jobs: Api<Job> = target.api();
    let retried = retry_job(&jobs, &args.job).await?;
    if args.watch.output == Output::Text {
        print(&format!(
            "job.drover.dev/{} retried (retry {}); attempts go on from {}",
            args.job,
            retried.spec.retries,
            retried.status.as_ref().map_or(0, |s| s.attempt) + 1
        ));
    }
    if !args.watch.watch {
        return Ok(ExitCode::SUCCESS);
    }
    // The retry is the operator's to carry out: wait until it has.
    wait_retried(&jobs, &args.job, retried.spec.retries).await?;
    follow(&jobs, &args.job, args.watch.output).await
}

async fn wait_retried(jobs: &Api<Job>, name: &str, retries: i32) -> anyhow::Result<()> {
    for _ in 0..120 {
        let job = jobs.get(name).await?;
        if job.status.as_ref().is_some_and(|s| s.retries >= retries) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("the operator did not take up the retry of {name} within 30 s")
}

pub async fn resubmit(target: &Target, args: &RerunArgs) -> anyhow::Result<ExitCode> {
    let old = target
        .api::<Job>()
        .get(&args.job)
        .await
        .with_context(|| format!("Job {}", args.job))?;
    let spec = JobSpec {
        cancel: false,
        retries: 0,
        idempotency_key: None,
        ..old.spec.clone()
    };
    let mut job = Job::new("", spec);
    job.metadata.name = None;
    job.metadata.generate_name = Some(format!("{}-", old.name_any()));
    job.metadata.annotations = Some([(RESUBMITTED_FROM.to_owned(), old.name_any())].into());
    create_and_follow(target, job, args.watch).await
}

/// The lines of `job`'s `attempt` (every attempt with `None`) in its
/// fleet's worker pods' logs, as `(pod, line)`; a pod whose log cannot be
/// read is skipped with a note on stderr.
async fn job_log_lines(target: &Target, job: &Job, attempt: Option<i32>) -> Vec<(String, String)> {
    let pods: Api<Pod> = target.api();
    let selector = format!("{WORKER_LABEL}={}", job.spec.worker);
    let list = match pods.list(&ListParams::default().labels(&selector)).await {
        Ok(list) => list.items,
        Err(error) => {
            eprintln!("cannot list the worker pods: {error}");
            return Vec::new();
        }
    };
    let name = job.name_any();
    let namespace = job.namespace().unwrap_or_else(|| target.namespace.clone());
    let wanted = Wanted {
        job: &name,
        namespace: &namespace,
        attempt,
    };
    let mut lines = Vec::new();
    for pod in &list {
        let pod_name = pod.name_any();
        let params = LogParams {
            container: Some(WORKER_CONTAINER.into()),
            ..LogParams::default()
        };
        match pods.logs(&pod_name, &params).await {
            Ok(text) => lines.extend(
                text.lines()
                    .filter(|line| logs::belongs(line, &wanted))
                    .map(|line| (pod_name.clone(), line.to_owned())),
            ),
            Err(error) => eprintln!("{pod_name}: cannot read its log: {error}"),
        }
    }
    lines
}

pub async fn logs(target: &Target, args: &LogsArgs) -> anyhow::Result<ExitCode> {
    let jobs: Api<Job> = target.api();
    let job = jobs
        .get(&args.job)
        .await
        .with_context(|| format!("Job {}", args.job))?;
    let attempt = match (args.all_attempts, args.attempt) {
        (true, _) => None,
        (false, Some(attempt)) => Some(attempt),
        (false, None) => Some(job.status.as_ref().map_or(1, |s| s.attempt.max(1))),
    };
    let namespace = target.namespace.clone();
    let wanted = Wanted {
        job: &args.job,
        namespace: &namespace,
        attempt,
    };
    let show = |pod: &str, line: &str| {
        if logs::belongs(line, &wanted) {
            if args.raw {
                print(line);
            } else {
                print(&logs::pretty(pod, line));
            }
        }
    };
    if !args.follow {
        for (pod, line) in job_log_lines(target, &job, attempt).await {
            show(&pod, &line);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let pods: Api<Pod> = target.api();
    let selector = format!("{WORKER_LABEL}={}", job.spec.worker);
    let list = pods
        .list(&ListParams::default().labels(&selector))
        .await
        .context("listing the worker pods")?;
    let mut streams = Vec::new();
    for pod in &list.items {
        let name = pod.name_any();
        let params = LogParams {
            container: Some(WORKER_CONTAINER.into()),
            follow: true,
            ..LogParams::default()
        };
        match pods.log_stream(&name, &params).await {
            Ok(stream) => {
                streams.push(stream.lines().map(move |line| (name.clone(), line)).boxed())
            }
            Err(error) => eprintln!("{name}: cannot follow its log: {error}"),
        }
    }
    let mut merged = futures::stream::select_all(streams);
    let finished = async {
        loop {
            match jobs.get(&args.job).await {
                Ok(job) if job.phase().is_terminal() => break,
                Err(kube::Error::Api(status)) if status.code == 404 => break,
                _ => tokio::time::sleep(Duration::from_secs(1)).await,
            }
        }
        // The outcome's own lines come just after its status write.
        tokio::time::sleep(Duration::from_secs(2)).await;
    };
    tokio::pin!(finished);
    loop {
        tokio::select! {
            next = merged.next() => match next {
                Some((pod, Ok(line))) => show(&pod, &line),
                Some((pod, Err(error))) => eprintln!("{pod}: {error}"),
                None => break,
            },
            _ = &mut finished => break,
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub async fn fleets(target: &Target, args: &FleetArgs) -> anyhow::Result<ExitCode> {
    let window = Duration::from_secs(args.window_minutes.max(1) * 60);
    loop {
        let mut fleets = target
            .list_api::<PipelineWorker>()
            .list(&ListParams::default())
            .await
            .context("listing PipelineWorkers")?
            .items;
        if let Some(only) = &args.worker {
            fleets.retain(|f| &f.name_any() == only);
        }
        let jobs = target
            .list_api::<Job>()
            .list(&ListParams::default())
            .await
            .context("listing Jobs")?
            .items;
        let now = Timestamp::now();
        let wide = target.all_namespaces;
        let mut headers: Vec<&str> = Vec::new();
        if wide {
            headers.push("NAMESPACE");
        }
        headers.extend(fleet::HEADERS);
        let rows: Vec<Vec<String>> = fleets
            .iter()
            .map(|f| {
                let mut row = Vec::new();
                if wide {
                    row.push(f.namespace().unwrap_or_default());
                }
                row.extend(fleet::row(f, &jobs, window, now));
                row
            })
            .collect();
        let text = if rows.is_empty() {
            "No PipelineWorkers found.".to_owned()
        } else {
            render::table(&headers, &rows)
        };
        if !args.watch {
            print(&text);
            return Ok(ExitCode::SUCCESS);
        }
        // Like top: clear the screen and draw again.
        print(&format!("\x1b[2J\x1b[H{text}"));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
