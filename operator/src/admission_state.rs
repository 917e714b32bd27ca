//! What admission needs to know about each fleet, kept up to date from the
//! Job and PipelineWorker watch events as they arrive: a small entry per
//! unfinished Job, the slots its fleet holds, which Jobs the operator
//! admitted and has not yet seen Queued, the token bucket, fair-share
//! history and whether the fleet has had idle workers. One event costs work
//! for its own Job and fleet only; a decision at capacity costs nothing more.
//!
//! The Job controller asks [`AdmissionState::try_admit`] before a first
//! publish or a retry and [`AdmissionState::may_republish`] before a
//! republish; a watch event that frees a slot marks its fleet, and
//! [`AdmissionState::pass`] then names the Jobs to reconcile.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;
use std::time::Duration;

use drover_crds::pipeline_worker::ScalingMode;
use drover_crds::{Job, JobPhase, PipelineWorker};
use futures::channel::mpsc;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::runtime::watcher;

use crate::admission::{
    self, CONDITION_ADMITTED, Candidate, Holder, Limits, Served, TokenBucket, Verdict, WaitReason,
};
use crate::backlog::BacklogCount;

/// A fleet: its namespace and name.
pub type FleetKey = (String, String);

/// The fleet a Job belongs to.
pub fn fleet_of(job: &Job) -> FleetKey {
    (job.namespace().unwrap_or_default(), job.spec.worker.clone())
}

/// The limits of `fleet`: its slots (`maxReplicas x concurrency`, or the
/// manual replica count when that is higher) with the prefetch, and its
/// `limits`.
pub fn limits_of(fleet: &PipelineWorker) -> Limits {
    let scaling = &fleet.spec.scaling;
    let mut replicas = scaling.max_replicas.max(0);
    if scaling.mode == ScalingMode::Manual {
        replicas = replicas.max(scaling.replicas.unwrap_or(0));
    }
    let slots = replicas
        .unsigned_abs()
        .saturating_mul(fleet.spec.concurrency.max(1).unsigned_abs());
    let limits = fleet.spec.limits.as_ref();
    let positive = |n: Option<i32>| n.filter(|n| *n > 0).map(i32::unsigned_abs);
    Limits {
        capacity: admission::capacity_for(slots),
        per_key_concurrency: positive(limits.and_then(|l| l.per_key_concurrency)),
        jobs_per_minute: positive(limits.and_then(|l| l.jobs_per_minute)),
    }
}

/// `spec.priority` clamped to the fleet's bounds.
pub fn priority_of(job: &Job, fleet: &PipelineWorker) -> i32 {
    let limits = fleet.spec.limits.as_ref();
    let low = limits.and_then(|l| l.min_priority).unwrap_or(i32::MIN);
    let high = limits
        .and_then(|l| l.max_priority)
        .unwrap_or(i32::MAX)
        .max(low);
    job.spec.priority.unwrap_or(0).clamp(low, high)
}

/// What the fleet controller reads of a fleet's Jobs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FleetBacklog {
    pub count: BacklogCount,
    /// The earliest future retry among its Backoff Jobs.
    pub next_retry: Option<Timestamp>,
    /// Running Jobs per claiming pod.
    pub running_by_pod: BTreeMap<String, u32>,
}

/// The answer to a Job that asks to be published.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Publish it: a slot is its own.
    Admitted,
    /// It waits, for `reason`.
    Wait { reason: WaitReason, limits: Limits },
}

/// What admission keeps of one unfinished Job.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    phase: JobPhase,
    attempt: i32,
    priority: Option<i32>,
    fairness_key: String,
    concurrency_key: Option<String>,
    created: Timestamp,
    retry_at: Option<Timestamp>,
    /// The reason of the Job's `Admitted=False` condition, if it shows one.
    shown: Option<String>,
    /// The pod whose claim a Running Job holds.
    pod: Option<String>,
    /// The relist that last listed it.
    listed: u64,
}

impl Entry {
    fn of(job: &Job, listed: u64) -> Option<Self> {
        let status = job.status.as_ref();
        let phase = job.phase();
        if phase.is_terminal() || job.spec.cancel || job.metadata.deletion_timestamp.is_some() {
            return None;
        }
        Some(Self {
            name: job.name_any(),
            phase,
            attempt: status.map_or(0, |s| s.attempt),
            priority: job.spec.priority,
            fairness_key: job.spec.fairness_key.clone().unwrap_or_default(),
            concurrency_key: job.spec.concurrency_key.clone(),
            created: job
                .metadata
                .creation_timestamp
                .as_ref()
                .map_or(Timestamp::UNIX_EPOCH, |t| t.0),
            retry_at: status.and_then(|s| s.retry_at.as_ref()).map(|t| t.0),
            shown: status.and_then(|s| {
                s.conditions
                    .iter()
                    .find(|c| c.type_ == CONDITION_ADMITTED && c.status == "False")
                    .map(|c| c.reason.clone())
            }),
            pod: status
                .filter(|s| s.phase == JobPhase::Running)
                .and_then(|s| s.claim.as_ref())
                .map(|c| c.pod.clone()),
            listed,
        })
    }

    /// Queued or Running: its message is out and unfinished.
    fn out(&self) -> bool {
        matches!(self.phase, JobPhase::Queued | JobPhase::Running)
    }

    /// The attempt its next publish would carry, if it waits for one.
    fn next_attempt(&self) -> Option<i32> {
        match self.phase {
            JobPhase::Pending => Some(self.attempt.max(1)),
            JobPhase::Backoff => Some(self.attempt + 1),
            _ => None,
        }
    }
}

/// One fleet's admission state.
#[derive(Debug, Default)]
struct FleetState {
    jobs: HashMap<String, Entry>,
    /// Jobs admitted for this attempt and not yet seen Queued, by uid.
    reserved: HashMap<String, i32>,
    /// Queued or Running entries.
    out: u32,
    /// Running entries.
    running: u32,
    /// Ready worker slots, from the fleet's status.
    ready_slots: u32,
    /// Since when the fleet has had a ready worker with a free slot, as
    /// first seen; `None` while every ready slot is taken.
    idle_since: Option<Timestamp>,
    /// When this operator last brought the fleet's queue back: every message
    /// published before is gone.
    queue_recreated_at: Option<Timestamp>,
    served: Served,
    served_seq: u64,
    bucket: Option<TokenBucket>,
}

impl FleetState {
    fn holding(&self) -> u32 {
        self.out
            .saturating_add(u32::try_from(self.reserved.len()).unwrap_or(u32::MAX))
    }

    /// Puts `entry` in place of the Job `uid`'s old one (`None` removes it);
    /// says whether a slot was freed.
    fn replace(&mut self, uid: &str, entry: Option<Entry>, now: Timestamp) -> bool {
        let held_before = self.holds(uid);
        if let Some(old) = self.jobs.remove(uid) {
            self.out -= u32::from(old.out());
            self.running -= u32::from(old.phase == JobPhase::Running);
        }
        match entry {
            Some(entry) => {
                self.out += u32::from(entry.out());
                self.running += u32::from(entry.phase == JobPhase::Running);
                // Seen with its message out, or past the admitted attempt.
                if self
                    .reserved
                    .get(uid)
                    .is_some_and(|attempt| entry.next_attempt() != Some(*attempt))
                {
                    self.reserved.remove(uid);
                }
                self.jobs.insert(uid.to_owned(), entry);
            }
            None => {
                self.reserved.remove(uid);
            }
        }
        self.track_idle(now);
        held_before && !self.holds(uid)
    }

    fn holds(&self, uid: &str) -> bool {
        self.reserved.contains_key(uid) || self.jobs.get(uid).is_some_and(Entry::out)
    }

    fn track_idle(&mut self, now: Timestamp) {
        if self.running < self.ready_slots {
            self.idle_since.get_or_insert(now);
        } else {
            self.idle_since = None;
        }
    }

    /// Decides every waiting Job at `now`: their uids and verdicts.
    fn decide(&self, fleet: &PipelineWorker, now: Timestamp) -> Vec<(&str, Verdict)> {
        let limits = limits_of(fleet);
        let waiting: Vec<(&String, &Entry)> = self
            .jobs
            .iter()
            .filter(|(uid, entry)| !self.reserved.contains_key(*uid) && waits(entry, now))
            .collect();
        if self.holding() >= limits.capacity {
            return waiting
                .into_iter()
                .map(|(uid, _)| (uid.as_str(), Verdict::Wait(WaitReason::FleetAtCapacity)))
                .collect();
        }
        let holders: Vec<Holder<'_>> = self
            .jobs
            .iter()
            .filter(|(uid, entry)| entry.out() || self.reserved.contains_key(*uid))
            .map(|(_, entry)| Holder {
                fairness_key: &entry.fairness_key,
                concurrency_key: entry.concurrency_key.as_deref(),
            })
            .collect();
        let low = fleet.spec.limits.as_ref().and_then(|l| l.min_priority);
        let high = fleet.spec.limits.as_ref().and_then(|l| l.max_priority);
        let candidates: Vec<Candidate<'_>> = waiting
            .iter()
            .map(|(_, entry)| Candidate {
                priority: clamp(entry.priority.unwrap_or(0), low, high),
                fairness_key: &entry.fairness_key,
                concurrency_key: entry.concurrency_key.as_deref(),
                created: entry.created,
                name: &entry.name,
            })
            .collect();
        let verdicts = admission::decide(
            &limits,
            &holders,
            &candidates,
            &self.served,
            self.bucket.as_ref(),
            now,
        );
        waiting
            .into_iter()
            .zip(verdicts)
            .map(|((uid, _), verdict)| (uid.as_str(), verdict))
            .collect()
    }
}

fn clamp(priority: i32, low: Option<i32>, high: Option<i32>) -> i32 {
    let low = low.unwrap_or(i32::MIN);
    priority.clamp(low, high.unwrap_or(i32::MAX).max(low))
}

/// Pending, or in Backoff with its retry due: it wants a slot.
fn waits(entry: &Entry, now: Timestamp) -> bool {
    match entry.phase {
        JobPhase::Pending => true,
        JobPhase::Backoff => entry.retry_at.is_some_and(|at| at <= now),
        _ => false,
    }
}

#[derive(Debug, Default)]
struct Inner {
    fleets: HashMap<FleetKey, FleetState>,
    /// Counts relists, so a relist can drop the Jobs it no longer lists.
    listing: u64,
    /// By uid, the resourceVersion the operator's last status write was
    /// made from, until the watch brings a newer one.
    written: HashMap<String, String>,
}

/// Admission state of every fleet, shared by the watch that feeds it and the
/// Job controller that asks it.
#[derive(Debug)]
pub struct AdmissionState {
    inner: Mutex<Inner>,
    /// Fleets where a slot was freed, for [`AdmissionState::pass`].
    freed: mpsc::UnboundedSender<FleetKey>,
}

/// What a pass over a fleet asks to be reconciled.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pass {
    /// Names of Jobs (in the fleet's namespace) whose answer changed.
    pub wake: Vec<String>,
}

impl AdmissionState {
    /// An empty state; `freed` hears of every fleet where a slot was freed.
    pub fn new(freed: mpsc::UnboundedSender<FleetKey>) -> Self {
        Self {
            inner: Mutex::default(),
            freed,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // Every update leaves the state whole; a panic elsewhere changes nothing.
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Applies one Job watch event.
    pub fn observe_job(&self, event: &watcher::Event<Job>, now: Timestamp) {
        let mut freed = HashSet::new();
        {
            let mut inner = self.lock();
            if let watcher::Event::Apply(job)
            | watcher::Event::InitApply(job)
            | watcher::Event::Delete(job) = event
                && let Some(uid) = job.uid()
            {
                inner.written.remove(&uid);
            }
            match event {
                watcher::Event::Init => inner.listing += 1,
                watcher::Event::InitApply(job) | watcher::Event::Apply(job) => {
                    let listed = inner.listing;
                    if upsert(&mut inner, job, Entry::of(job, listed), now) {
                        freed.insert(fleet_of(job));
                    }
                }
                watcher::Event::Delete(job) => {
                    if upsert(&mut inner, job, None, now) {
                        freed.insert(fleet_of(job));
                    }
                }
                watcher::Event::InitDone => {
                    let listing = inner.listing;
                    for (key, fleet) in &mut inner.fleets {
                        let gone: Vec<String> = fleet
                            .jobs
                            .iter()
                            .filter(|(_, e)| e.listed != listing)
                            .map(|(uid, _)| uid.clone())
                            .collect();
                        for uid in gone {
                            fleet.replace(&uid, None, now);
                        }
                        freed.insert(key.clone());
                    }
                }
            }
        }
        for key in freed {
            // The receiver lives as long as the Job controller.
            let _ = self.freed.unbounded_send(key);
        }
    }

    /// Notes that a status write made from this version of `job` succeeded:
    /// until the watch brings the new version, this one is out of date.
    pub fn note_written(&self, job: &Job) {
        if let (Some(uid), Some(version)) = (job.uid(), job.resource_version()) {
            self.lock().written.insert(uid, version);
        }
    }

    /// Whether the operator already wrote over this version of `job`: a
    /// reconcile woken before the watch caught up must not act on it again
    /// (it would publish twice, or write and be refused).
    pub fn superseded(&self, job: &Job) -> bool {
        let (Some(uid), Some(version)) = (job.uid(), job.resource_version()) else {
            return false;
        };
        let mut inner = self.lock();
        match inner.written.get(&uid) {
            Some(written) if *written == version => true,
            // The watch answered before the write did: forget the note.
            Some(_) => {
                inner.written.remove(&uid);
                false
            }
            None => false,
        }
    }

    /// Applies one PipelineWorker watch event: its ready slots.
    pub fn observe_fleet(&self, event: &watcher::Event<PipelineWorker>, now: Timestamp) {
        let (fleet, ready) = match event {
            watcher::Event::Apply(f) | watcher::Event::InitApply(f) => {
                let ready = f.status.as_ref().map_or(0, |s| s.ready_replicas.max(0));
                (f, ready.unsigned_abs())
            }
            watcher::Event::Delete(f) => (f, 0),
            watcher::Event::Init | watcher::Event::InitDone => return,
        };
        let slots = ready.saturating_mul(fleet.spec.concurrency.max(1).unsigned_abs());
        let key = (fleet.namespace().unwrap_or_default(), fleet.name_any());
        let mut inner = self.lock();
        let state = inner.fleets.entry(key).or_default();
        state.ready_slots = slots;
        state.track_idle(now);
    }

    /// Decides whether `job` (Pending, or in Backoff with its retry due) is
    /// published now; an admitted Job holds its slot until it is seen Queued.
    pub fn try_admit(&self, job: &Job, fleet: &PipelineWorker, now: Timestamp) -> Admission {
        let uid = job.uid().unwrap_or_default();
        let key = fleet_of(job);
        let mut inner = self.lock();
        let listed = inner.listing;
        // The watch feeds this state before the cache the reconcile read
        // from: an entry already here is at least as new as `job`.
        let known = inner
            .fleets
            .get(&key)
            .is_some_and(|state| state.jobs.contains_key(&uid));
        if !known {
            upsert(&mut inner, job, Entry::of(job, listed), now);
        }
        let state = inner.fleets.entry(key).or_default();
        let limits = limits_of(fleet);
        let Some(attempt) = state.jobs.get(&uid).and_then(Entry::next_attempt) else {
            return Admission::Wait {
                reason: WaitReason::FleetAtCapacity,
                limits,
            };
        };
        if state.reserved.get(&uid) == Some(&attempt) {
            return Admission::Admitted;
        }
        if state.holding() >= limits.capacity {
            return Admission::Wait {
                reason: WaitReason::FleetAtCapacity,
                limits,
            };
        }
        // Only waiting Jobs get a verdict; any other waits as if at capacity.
        let verdict = state
            .decide(fleet, now)
            .into_iter()
            .find(|(u, _)| *u == uid)
            .map_or(Verdict::Wait(WaitReason::FleetAtCapacity), |(_, v)| v);
        match verdict {
            Verdict::Admit => {
                state.reserved.insert(uid, attempt);
                if let Some(rate) = limits.jobs_per_minute {
                    state
                        .bucket
                        .get_or_insert_with(|| TokenBucket::full(rate, now))
                        .take(rate, now);
                }
                state.served_seq += 1;
                let fairness = job.spec.fairness_key.clone().unwrap_or_default();
                state.served.insert(fairness, state.served_seq);
                Admission::Admitted
            }
            Verdict::Wait(reason) => Admission::Wait { reason, limits },
        }
    }

    /// Whether the Queued `job`, unclaimed since it was published at
    /// `queued_at`, may be published again: its fleet's queue was brought
    /// back since, or the fleet has had a ready worker with a free slot for
    /// `bound` and nobody took the message. `Err` is how long to wait before
    /// asking again.
    pub fn may_republish(
        &self,
        job: &Job,
        queued_at: Timestamp,
        bound: Duration,
        now: Timestamp,
    ) -> Result<(), Duration> {
        if self.lost_with_queue(job, queued_at) {
            return Ok(());
        }
        let inner = self.lock();
        let Some(state) = inner.fleets.get(&fleet_of(job)) else {
            return Err(bound);
        };
        let Some(idle_since) = state.idle_since else {
            return Err(bound);
        };
        let idle_for = Duration::try_from(now.duration_since(idle_since)).unwrap_or_default();
        match bound.checked_sub(idle_for) {
            Some(left) if !left.is_zero() => Err(left),
            _ => Ok(()),
        }
    }

    /// Whether the message of `job`, published at `queued_at`, went with a
    /// queue this operator brought back since.
    pub fn lost_with_queue(&self, job: &Job, queued_at: Timestamp) -> bool {
        self.lock()
            .fleets
            .get(&fleet_of(job))
            .and_then(|state| state.queue_recreated_at)
            .is_some_and(|at| at > queued_at)
    }

    /// Notes that the fleet's queue was brought back at `now`; returns the
    /// names of its Queued Jobs, whose messages are gone.
    pub fn queue_recreated(&self, fleet: &FleetKey, now: Timestamp) -> Vec<String> {
        let mut inner = self.lock();
        let state = inner.fleets.entry(fleet.clone()).or_default();
        // Job times are whole seconds: a Job published later in this same
        // second must not count as lost.
        state.queue_recreated_at = Timestamp::from_second(now.as_second()).ok();
        state
            .jobs
            .values()
            .filter(|e| e.phase == JobPhase::Queued)
            .map(|e| e.name.clone())
            .collect()
    }

    /// After a slot was freed in `fleet`: the Jobs to reconcile now, those
    /// admitted and those whose `Admitted` reason changed.
    pub fn pass(&self, key: &FleetKey, fleet: &PipelineWorker, now: Timestamp) -> Pass {
        let inner = self.lock();
        let Some(state) = inner.fleets.get(key) else {
            return Pass::default();
        };
        let mut wake: Vec<String> = state
            .decide(fleet, now)
            .into_iter()
            .filter_map(|(uid, verdict)| {
                let entry = state.jobs.get(uid)?;
                let changed = match verdict {
                    Verdict::Admit => true,
                    // Only a Pending Job shows why it waits.
                    Verdict::Wait(reason) => {
                        entry.phase == JobPhase::Pending
                            && entry.shown.as_deref() != Some(reason.as_str())
                    }
                };
                changed.then(|| entry.name.clone())
            })
            .collect();
        wake.sort();
        Pass { wake }
    }

    /// The fleet's backlog as the scaler counts it (see `backlog::count`),
    /// when its next Backoff retry falls due, and how many Running Jobs each
    /// of its pods holds: from the fleet's own entries, no pass over every Job.
    pub fn backlog(&self, key: &FleetKey, now: Timestamp) -> FleetBacklog {
        let inner = self.lock();
        let mut backlog = FleetBacklog::default();
        let Some(state) = inner.fleets.get(key) else {
            return backlog;
        };
        for entry in state.jobs.values() {
            let count = &mut backlog.count;
            match entry.phase {
                JobPhase::Pending | JobPhase::Queued => {
                    count.backlog.queued += 1;
                    count.demand += 1;
                }
                JobPhase::Running => {
                    count.backlog.running += 1;
                    count.demand += 1;
                    if let Some(pod) = &entry.pod {
                        *backlog.running_by_pod.entry(pod.clone()).or_default() += 1;
                    }
                }
                JobPhase::Backoff => {
                    count.backlog.backoff += 1;
                    match entry.retry_at {
                        Some(at) if at > now => {
                            backlog.next_retry = Some(backlog.next_retry.map_or(at, |n| n.min(at)));
                        }
                        _ => count.demand += 1,
                    }
                }
                // Nobody runs it and it is not due: its provider works on it.
                JobPhase::Waiting => {}
                JobPhase::Succeeded | JobPhase::Failed | JobPhase::Cancelled => {}
            }
        }
        backlog
    }

    /// Slots the fleet holds now (for tests and the benchmark's logs).
    pub fn holding(&self, key: &FleetKey) -> u32 {
        self.lock().fleets.get(key).map_or(0, FleetState::holding)
    }
}

/// Replaces the Job's entry; true when that freed a slot of its fleet.
fn upsert(inner: &mut Inner, job: &Job, entry: Option<Entry>, now: Timestamp) -> bool {
    let uid = job.uid().unwrap_or_default();
    let key = fleet_of(job);
    if entry.is_none() && !inner.fleets.contains_key(&key) {
        return false;
    }
    inner
        .fleets
        .entry(key)
        .or_default()
        .replace(&uid, entry, now)
}

#[cfg(test)]
mod tests {
    use super::*;
    use drover_crds::JobStatus;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use serde_json::json;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).unwrap()
    }

    fn fleet(max_replicas: i32, concurrency: i32) -> PipelineWorker {
        let mut fleet = PipelineWorker::new(
            "w",
            serde_json::from_value(json!({
                "pipeline": "sleep",
                "queue": {"topic": "t", "subscription": "s"},
                "concurrency": concurrency,
                "scaling": {"maxReplicas": max_replicas},
            }))
            .unwrap(),
        );
        fleet.metadata.namespace = Some("ns".into());
        fleet
    }

    fn job(name: &str, phase: JobPhase, created: i64) -> Job {
        let mut job = Job::new(
            name,
            serde_json::from_value(json!({"worker": "w", "input": {}})).unwrap(),
        );
        job.metadata.namespace = Some("ns".into());
        job.metadata.uid = Some(format!("uid-{name}"));
        job.metadata.creation_timestamp = Some(Time(at(created)));
        job.status = Some(JobStatus {
            phase,
            attempt: i32::from(phase != JobPhase::Pending),
            ..JobStatus::default()
        });
        job
    }

    fn state() -> (AdmissionState, mpsc::UnboundedReceiver<FleetKey>) {
        let (tx, rx) = mpsc::unbounded();
        (AdmissionState::new(tx), rx)
    }

    fn key() -> FleetKey {
        ("ns".into(), "w".into())
    }

    #[test]
    fn a_fleet_admits_up_to_its_capacity_and_holds_the_slots_until_published() {
        let (admission, _freed) = state();
        // 1 replica x 1 slot: capacity 2 with the prefetch.
        let fleet = fleet(1, 1);
        let jobs: Vec<Job> = (0..3)
            .map(|i| job(&format!("j{i}"), JobPhase::Pending, i))
            .collect();
        for j in &jobs {
            admission.observe_job(&watcher::Event::Apply(j.clone()), at(10));
        }
        assert_eq!(
            admission.try_admit(&jobs[0], &fleet, at(10)),
            Admission::Admitted
        );
        assert_eq!(
            admission.try_admit(&jobs[1], &fleet, at(10)),
            Admission::Admitted
        );
        assert!(matches!(
            admission.try_admit(&jobs[2], &fleet, at(10)),
            Admission::Wait {
                reason: WaitReason::FleetAtCapacity,
                ..
            }
        ));
        // Asking again while still Pending keeps the slot, taking no second one.
        assert_eq!(
            admission.try_admit(&jobs[0], &fleet, at(11)),
            Admission::Admitted
        );
        let mut queued = jobs[0].clone();
        queued.status.as_mut().unwrap().phase = JobPhase::Queued;
        queued.status.as_mut().unwrap().attempt = 1;
        admission.observe_job(&watcher::Event::Apply(queued), at(12));
        assert_eq!(admission.holding(&key()), 2);
    }

    #[test]
    fn a_finished_job_frees_its_slot_and_the_pass_wakes_the_next() {
        let (admission, mut freed) = state();
        let fleet = fleet(1, 1);
        let running = job("running", JobPhase::Running, 0);
        let queued = job("queued", JobPhase::Queued, 1);
        let waiting = job("waiting", JobPhase::Pending, 2);
        for j in [&running, &queued, &waiting] {
            admission.observe_job(&watcher::Event::Apply(j.clone()), at(10));
        }
        assert!(matches!(
            admission.try_admit(&waiting, &fleet, at(10)),
            Admission::Wait { .. }
        ));
        let mut done = running.clone();
        done.status.as_mut().unwrap().phase = JobPhase::Succeeded;
        admission.observe_job(&watcher::Event::Apply(done), at(11));
        assert_eq!(freed.try_recv().ok(), Some(key()));
        assert_eq!(
            admission.pass(&key(), &fleet, at(11)).wake,
            vec!["waiting".to_owned()]
        );
        assert_eq!(
            admission.try_admit(&waiting, &fleet, at(11)),
            Admission::Admitted
        );
    }

    #[test]
    fn a_pass_wakes_a_waiting_job_only_when_its_reason_changes() {
        let (admission, _freed) = state();
        let fleet = fleet(1, 1);
        let mut shown = job("shown", JobPhase::Pending, 5);
        shown.status.as_mut().unwrap().conditions =
            vec![k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
                type_: CONDITION_ADMITTED.into(),
                status: "False".into(),
                reason: "FleetAtCapacity".into(),
                message: String::new(),
                last_transition_time: Time(at(5)),
                observed_generation: None,
            }];
        for j in [
            job("a", JobPhase::Queued, 0),
            job("b", JobPhase::Queued, 1),
            shown,
        ] {
            admission.observe_job(&watcher::Event::Apply(j), at(10));
        }
        assert!(admission.pass(&key(), &fleet, at(10)).wake.is_empty());
    }

    #[test]
    fn a_deleted_waiting_job_is_forgotten_and_a_relist_drops_what_it_misses() {
        let (admission, _freed) = state();
        let fleet = fleet(1, 1);
        let a = job("a", JobPhase::Pending, 0);
        let b = job("b", JobPhase::Pending, 1);
        admission.observe_job(&watcher::Event::Apply(a.clone()), at(1));
        admission.observe_job(&watcher::Event::Apply(b.clone()), at(1));
        assert_eq!(admission.try_admit(&a, &fleet, at(1)), Admission::Admitted);
        admission.observe_job(&watcher::Event::Delete(a.clone()), at(2));
        assert_eq!(admission.holding(&key()), 0);
        admission.try_admit(&b, &fleet, at(2));
        assert_eq!(admission.holding(&key()), 1);
        // A relist that no longer lists b drops it and its slot.
        admission.observe_job(&watcher::Event::Init, at(3));
        admission.observe_job(&watcher::Event::InitDone, at(3));
        assert_eq!(admission.holding(&key()), 0);
    }

    #[test]
    fn a_queued_job_is_republished_only_after_the_fleet_was_idle_for_the_bound() {
        let (admission, _freed) = state();
        let mut fleet = fleet(2, 1);
        let queued = job("q", JobPhase::Queued, 0);
        admission.observe_job(&watcher::Event::Apply(queued.clone()), at(0));
        let bound = Duration::from_secs(30);
        // No ready worker: waiting in line is no reason to publish again.
        assert_eq!(
            admission.may_republish(&queued, at(0), bound, at(100)),
            Err(bound)
        );
        fleet.status = Some(drover_crds::PipelineWorkerStatus {
            ready_replicas: 1,
            ..Default::default()
        });
        admission.observe_fleet(&watcher::Event::Apply(fleet.clone()), at(100));
        assert_eq!(
            admission.may_republish(&queued, at(0), bound, at(120)),
            Err(Duration::from_secs(10))
        );
        assert_eq!(
            admission.may_republish(&queued, at(0), bound, at(130)),
            Ok(())
        );
        // A busy worker resets the clock.
        let mut running = job("r", JobPhase::Running, 1);
        running.metadata.uid = Some("uid-r".into());
        admission.observe_job(&watcher::Event::Apply(running), at(131));
        assert_eq!(
            admission.may_republish(&queued, at(0), bound, at(140)),
            Err(bound)
        );
    }

    #[test]
    fn a_recreated_queue_republishes_its_queued_jobs_at_once() {
        let (admission, _freed) = state();
        let queued = job("q", JobPhase::Queued, 0);
        admission.observe_job(&watcher::Event::Apply(queued.clone()), at(0));
        assert_eq!(
            admission.queue_recreated(&key(), at(5)),
            vec!["q".to_owned()]
        );
        assert_eq!(
            admission.may_republish(&queued, at(1), Duration::from_secs(30), at(6)),
            Ok(())
        );
    }

    #[test]
    fn the_backlog_counts_waiting_jobs_too() {
        let (admission, _freed) = state();
        let fleet = fleet(1, 1);
        let mut running = job("r", JobPhase::Running, 0);
        running.status.as_mut().unwrap().claim = Some(drover_crds::job::Claim {
            id: "c".into(),
            pod: "pod-1".into(),
            renew_time: Time(at(0)),
            lease_seconds: 30,
        });
        let mut later = job("b", JobPhase::Backoff, 1);
        later.status.as_mut().unwrap().retry_at = Some(Time(at(50)));
        for j in [running, later, job("q", JobPhase::Queued, 2)] {
            admission.observe_job(&watcher::Event::Apply(j), at(10));
        }
        for i in 0..5 {
            let waiting = job(&format!("p{i}"), JobPhase::Pending, 3 + i);
            admission.observe_job(&watcher::Event::Apply(waiting.clone()), at(10));
            admission.try_admit(&waiting, &fleet, at(10));
        }
        let backlog = admission.backlog(&key(), at(10));
        assert_eq!(backlog.count.backlog.queued, 6);
        assert_eq!(backlog.count.backlog.running, 1);
        assert_eq!(backlog.count.backlog.backoff, 1);
        assert_eq!(backlog.count.demand, 7);
        assert_eq!(backlog.next_retry, Some(at(50)));
        assert_eq!(
            backlog.running_by_pod,
            BTreeMap::from([("pod-1".into(), 1)])
        );
    }

    #[test]
    fn a_version_written_over_is_superseded_until_the_watch_brings_the_next() {
        let (admission, _freed) = state();
        let mut pending = job("p", JobPhase::Pending, 0);
        pending.metadata.resource_version = Some("10".into());
        admission.observe_job(&watcher::Event::Apply(pending.clone()), at(0));
        assert!(!admission.superseded(&pending));
        admission.note_written(&pending);
        assert!(admission.superseded(&pending));
        let mut queued = job("p", JobPhase::Queued, 0);
        queued.metadata.resource_version = Some("11".into());
        admission.observe_job(&watcher::Event::Apply(queued.clone()), at(1));
        assert!(!admission.superseded(&pending) && !admission.superseded(&queued));
    }

    #[test]
    fn fleet_bounds_clamp_a_jobs_priority() {
        let mut fleet = fleet(1, 1);
        fleet.spec.limits = Some(drover_crds::pipeline_worker::LimitsSpec {
            min_priority: Some(-5),
            max_priority: Some(5),
            ..Default::default()
        });
        let mut j = job("j", JobPhase::Pending, 0);
        j.spec.priority = Some(100);
        assert_eq!(priority_of(&j, &fleet), 5);
        j.spec.priority = None;
        assert_eq!(priority_of(&j, &fleet), 0);
    }
}
