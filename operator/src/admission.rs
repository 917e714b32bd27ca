//! Which waiting Jobs of one fleet are handed to Pub/Sub now, as a pure
//! function of the fleet's limits, the Jobs that hold a slot and the Jobs that
//! wait. Nothing here knows Kubernetes or Pub/Sub; `admission_state` feeds it
//! from the Job watch and the Job controller carries the answer out.
//!
//! The rule: candidates are ordered by priority (higher first), then by fair
//! share between fairness keys (a key's n-th waiting Job counts as
//! `held + n`, where `held` is how many slots the key holds now, and a tie
//! goes to the key served least recently, so two keys with work alternate),
//! then by creation time (FIFO inside one key). Walking that order, a Job
//! waits with `FleetAtCapacity` once the fleet's slots are taken, with
//! `KeyConcurrencyLimit` while its concurrency key holds its limit, and with
//! `RateLimited` while the fleet's token bucket is empty; otherwise it is
//! admitted.

use std::collections::HashMap;
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

/// Slots beyond `maxReplicas x concurrency`, as a fraction (a quarter,
/// at least one): a worker that finishes finds its next message already
/// waiting instead of waiting for the operator's publish.
pub const PREFETCH_DIVISOR: u32 = 4;

/// The `Admitted` condition's type on a waiting Job.
pub const CONDITION_ADMITTED: &str = "Admitted";

/// What bounds the Jobs a fleet has out at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Published, unfinished Jobs the fleet may hold: its worker slots plus
    /// the prefetch.
    pub capacity: u32,
    /// At most this many slots per concurrency key, when set.
    pub per_key_concurrency: Option<u32>,
    /// Admissions per minute over the whole fleet, when set.
    pub jobs_per_minute: Option<u32>,
}

/// The fleet's capacity for `slots` worker slots (`maxReplicas x concurrency`).
pub fn capacity_for(slots: u32) -> u32 {
    slots.saturating_add(slots.div_ceil(PREFETCH_DIVISOR).max(1))
}

/// Why a Job is not admitted now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WaitReason {
    /// Every slot of the fleet is taken.
    FleetAtCapacity,
    /// The Job's concurrency key holds `limits.perKeyConcurrency` slots.
    KeyConcurrencyLimit,
    /// The fleet's `limits.jobsPerMinute` leaves no admission now; the next
    /// one is possible after `retry_in`.
    RateLimited { retry_in: Duration },
}

impl WaitReason {
    /// The reason of the Job's `Admitted=False` condition.
    pub fn as_str(self) -> &'static str {
        match self {
            WaitReason::FleetAtCapacity => "FleetAtCapacity",
            WaitReason::KeyConcurrencyLimit => "KeyConcurrencyLimit",
            WaitReason::RateLimited { .. } => "RateLimited",
        }
    }

    /// What the condition's message says, for `kubectl describe`.
    pub fn message(self, limits: &Limits) -> String {
        match self {
            WaitReason::FleetAtCapacity => format!(
                "the fleet holds its capacity of {} published, unfinished Jobs; this Job is published when one finishes",
                limits.capacity
            ),
            WaitReason::KeyConcurrencyLimit => format!(
                "its spec.concurrencyKey holds the fleet's limits.perKeyConcurrency of {}",
                limits.per_key_concurrency.unwrap_or_default()
            ),
            WaitReason::RateLimited { .. } => format!(
                "the fleet's limits.jobsPerMinute of {} leaves no admission now",
                limits.jobs_per_minute.unwrap_or_default()
            ),
        }
    }
}

/// The verdict for one candidate.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    Wait(WaitReason),
}

/// A Job that holds one of the fleet's slots (published and unfinished, or
/// admitted and about to be published).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Holder<'a> {
    pub fairness_key: &'a str,
    pub concurrency_key: Option<&'a str>,
}

/// A Job that waits for a slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate<'a> {
    /// Already clamped to the fleet's bounds.
    pub priority: i32,
    /// `""` for Jobs without `spec.fairnessKey`: they share one key.
    pub fairness_key: &'a str,
    pub concurrency_key: Option<&'a str>,
    pub created: Timestamp,
    /// Breaks ties between Jobs created in the same instant.
    pub name: &'a str,
}

/// How recently each fairness key was served: a higher number is later.
pub type Served = HashMap<String, u64>;

/// A token bucket of `jobs_per_minute`, holding at most one second's worth
/// (at least one token), so a burst after a quiet spell stays small.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TokenBucket {
    tokens: f64,
    updated: Timestamp,
}

impl TokenBucket {
    /// A full bucket at `now`.
    pub fn full(jobs_per_minute: u32, now: Timestamp) -> Self {
        Self {
            tokens: burst(jobs_per_minute),
            updated: now,
        }
    }

    /// Tokens there are at `now`.
    pub fn available(&self, jobs_per_minute: u32, now: Timestamp) -> f64 {
        let elapsed = now.duration_since(self.updated).as_secs_f64().max(0.0);
        (self.tokens + elapsed * per_second(jobs_per_minute)).min(burst(jobs_per_minute))
    }

    /// Takes one token at `now` (the caller checked there is one).
    pub fn take(&mut self, jobs_per_minute: u32, now: Timestamp) {
        self.tokens = (self.available(jobs_per_minute, now) - 1.0).max(0.0);
        self.updated = now;
    }

    /// How long until a bucket with `tokens` at `now` has one whole token.
    fn until_whole(tokens: f64, jobs_per_minute: u32) -> Duration {
        let missing = (1.0 - tokens).max(0.0);
        Duration::try_from_secs_f64(missing / per_second(jobs_per_minute))
            .unwrap_or(Duration::from_secs(60))
    }
}

fn per_second(jobs_per_minute: u32) -> f64 {
    f64::from(jobs_per_minute.max(1)) / 60.0
}

fn burst(jobs_per_minute: u32) -> f64 {
    (f64::from(jobs_per_minute) / 60.0).floor().max(1.0)
}

/// Decides every candidate at `now`; the verdicts come back in the order of
/// `candidates`. Pure: the caller commits an admission (holds the slot,
/// takes the token, notes the key in `served`).
pub fn decide(
    limits: &Limits,
    holders: &[Holder<'_>],
    candidates: &[Candidate<'_>],
    served: &Served,
    bucket: Option<&TokenBucket>,
    now: Timestamp,
) -> Vec<Verdict> {
    let mut verdicts = vec![Verdict::Wait(WaitReason::FleetAtCapacity); candidates.len()];
    let mut used = u32::try_from(holders.len()).unwrap_or(u32::MAX);
    if used >= limits.capacity {
        return verdicts;
    }
    let mut held_by_fairness: HashMap<&str, u32> = HashMap::new();
    let mut held_by_key: HashMap<&str, u32> = HashMap::new();
    for holder in holders {
        *held_by_fairness.entry(holder.fairness_key).or_default() += 1;
        if let Some(key) = holder.concurrency_key {
            *held_by_key.entry(key).or_default() += 1;
        }
    }
    let mut tokens = match (limits.jobs_per_minute, bucket) {
        (Some(rate), Some(bucket)) => Some(bucket.available(rate, now)),
        (Some(rate), None) => Some(burst(rate)),
        (None, _) => None,
    };
    for index in order(candidates, &held_by_fairness, served) {
        if used >= limits.capacity {
            break;
        }
        let candidate = &candidates[index];
        if let (Some(limit), Some(key)) = (limits.per_key_concurrency, candidate.concurrency_key)
            && held_by_key.get(key).copied().unwrap_or(0) >= limit
        {
            verdicts[index] = Verdict::Wait(WaitReason::KeyConcurrencyLimit);
            continue;
        }
        // A rate-limited Job keeps its place: the slot is its own once a
        // token comes, so the Jobs behind it wait for capacity.
        used += 1;
        if let Some(key) = candidate.concurrency_key {
            *held_by_key.entry(key).or_default() += 1;
        }
        match (tokens.as_mut(), limits.jobs_per_minute) {
            (Some(left), Some(rate)) if *left < 1.0 => {
                verdicts[index] = Verdict::Wait(WaitReason::RateLimited {
                    retry_in: TokenBucket::until_whole(*left, rate),
                });
            }
            (Some(left), _) => {
                *left -= 1.0;
                verdicts[index] = Verdict::Admit;
            }
            (None, _) => verdicts[index] = Verdict::Admit,
        }
    }
    verdicts
}

/// Candidate indices in admission order: priority, fair share, creation.
fn order(
    candidates: &[Candidate<'_>],
    held_by_fairness: &HashMap<&str, u32>,
    served: &Served,
) -> Vec<usize> {
    // Each key's Jobs in FIFO order give the key's n-th Job its share rank.
    let mut by_key: HashMap<(i32, &str), Vec<usize>> = HashMap::new();
    for (index, candidate) in candidates.iter().enumerate() {
        by_key
            .entry((candidate.priority, candidate.fairness_key))
            .or_default()
            .push(index);
    }
    let mut ranked = Vec::with_capacity(candidates.len());
    for ((_, key), mut indices) in by_key {
        indices.sort_by(|&a, &b| fifo(&candidates[a], &candidates[b]));
        let held = u64::from(held_by_fairness.get(key).copied().unwrap_or(0));
        // Never served sorts first; then least recently served.
        let last_served = served.get(key).map_or(0, |seq| seq.saturating_add(1));
        for (n, index) in indices.into_iter().enumerate() {
            ranked.push((index, held + n as u64, last_served));
        }
    }
    ranked.sort_by(|a, b| {
        let (ca, cb) = (&candidates[a.0], &candidates[b.0]);
        cb.priority
            .cmp(&ca.priority)
            .then(a.1.cmp(&b.1))
            .then(a.2.cmp(&b.2))
            .then_with(|| fifo(ca, cb))
    });
    ranked.into_iter().map(|(index, _, _)| index).collect()
}

fn fifo(a: &Candidate<'_>, b: &Candidate<'_>) -> std::cmp::Ordering {
    a.created.cmp(&b.created).then(a.name.cmp(b.name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(second: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + second).unwrap()
    }

    struct Job {
        name: String,
        priority: i32,
        fairness: String,
        key: Option<String>,
        created: Timestamp,
    }

    fn job(name: &str, fairness: &str, created: i64) -> Job {
        Job {
            name: name.into(),
            priority: 0,
            fairness: fairness.into(),
            key: None,
            created: at(created),
        }
    }

    fn candidates(jobs: &[Job]) -> Vec<Candidate<'_>> {
        jobs.iter()
            .map(|j| Candidate {
                priority: j.priority,
                fairness_key: &j.fairness,
                concurrency_key: j.key.as_deref(),
                created: j.created,
                name: &j.name,
            })
            .collect()
    }

    fn limits(capacity: u32) -> Limits {
        Limits {
            capacity,
            per_key_concurrency: None,
            jobs_per_minute: None,
        }
    }

    /// Runs a fleet of capacity 1 to the end: admits one, finishes it, and
    /// so on; returns the names in the order they were admitted.
    fn start_order(jobs: Vec<Job>) -> Vec<String> {
        let mut waiting = jobs;
        let mut served = Served::new();
        let mut started = Vec::new();
        let mut seq = 0;
        while !waiting.is_empty() {
            let verdicts = decide(
                &limits(1),
                &[],
                &candidates(&waiting),
                &served,
                None,
                at(1000),
            );
            let admitted = verdicts.iter().position(|v| *v == Verdict::Admit).unwrap();
            let job = waiting.remove(admitted);
            seq += 1;
            served.insert(job.fairness.clone(), seq);
            started.push(job.name);
        }
        started
    }

    #[test]
    fn capacity_is_slots_plus_a_quarter_and_at_least_one() {
        assert_eq!(capacity_for(8), 10);
        assert_eq!(capacity_for(1), 2);
        assert_eq!(capacity_for(100), 125);
    }

    #[test]
    fn without_keys_jobs_start_in_creation_order() {
        let jobs = vec![job("c", "", 3), job("a", "", 1), job("b", "", 2)];
        assert_eq!(start_order(jobs), ["a", "b", "c"]);
    }

    #[test]
    fn two_tenants_alternate_when_both_have_work() {
        let mut jobs: Vec<Job> = (0..4).map(|i| job(&format!("a{i}"), "a", i)).collect();
        jobs.extend((0..4).map(|i| job(&format!("b{i}"), "b", 10 + i)));
        assert_eq!(
            start_order(jobs),
            ["a0", "b0", "a1", "b1", "a2", "b2", "a3", "b3"]
        );
    }

    #[test]
    fn a_tenant_holding_slots_yields_to_one_holding_none() {
        let jobs = vec![job("a1", "a", 1), job("b1", "b", 2)];
        let holders = [Holder {
            fairness_key: "a",
            concurrency_key: None,
        }];
        let verdicts = decide(
            &limits(2),
            &holders,
            &candidates(&jobs),
            &Served::new(),
            None,
            at(10),
        );
        assert_eq!(
            verdicts,
            [Verdict::Wait(WaitReason::FleetAtCapacity), Verdict::Admit]
        );
    }

    #[test]
    fn higher_priority_jumps_the_queue() {
        let mut jobs: Vec<Job> = (0..5).map(|i| job(&format!("low{i}"), "", i)).collect();
        let mut urgent = job("urgent", "", 100);
        urgent.priority = 10;
        jobs.push(urgent);
        assert_eq!(start_order(jobs)[0], "urgent");
    }

    #[test]
    fn priority_outranks_fair_share() {
        let mut jobs = vec![job("a1", "a", 1), job("a2", "a", 2), job("b1", "b", 3)];
        jobs[1].priority = 5;
        jobs[0].priority = 5;
        assert_eq!(start_order(jobs), ["a1", "a2", "b1"]);
    }

    #[test]
    fn a_full_fleet_admits_nothing() {
        let jobs = vec![job("a", "", 1)];
        let holders = [Holder {
            fairness_key: "",
            concurrency_key: None,
        }; 2];
        assert_eq!(
            decide(
                &limits(2),
                &holders,
                &candidates(&jobs),
                &Served::new(),
                None,
                at(0)
            ),
            [Verdict::Wait(WaitReason::FleetAtCapacity)]
        );
    }

    #[test]
    fn a_key_at_its_limit_waits_while_others_pass() {
        let mut jobs = vec![job("k1", "", 1), job("other", "", 2)];
        jobs[0].key = Some("llm".into());
        let holders = [Holder {
            fairness_key: "",
            concurrency_key: Some("llm"),
        }];
        let limits = Limits {
            per_key_concurrency: Some(1),
            ..limits(5)
        };
        assert_eq!(
            decide(
                &limits,
                &holders,
                &candidates(&jobs),
                &Served::new(),
                None,
                at(0)
            ),
            [
                Verdict::Wait(WaitReason::KeyConcurrencyLimit),
                Verdict::Admit
            ]
        );
    }

    #[test]
    fn an_empty_bucket_rate_limits_and_says_when_to_look_again() {
        let jobs = vec![job("a", "", 1), job("b", "", 2), job("c", "", 3)];
        let limits = Limits {
            jobs_per_minute: Some(30),
            ..limits(2)
        };
        let mut bucket = TokenBucket::full(30, at(0));
        let verdicts = decide(
            &limits,
            &[],
            &candidates(&jobs),
            &Served::new(),
            Some(&bucket),
            at(0),
        );
        assert_eq!(verdicts[0], Verdict::Admit);
        assert_eq!(
            verdicts[1],
            Verdict::Wait(WaitReason::RateLimited {
                retry_in: Duration::from_secs(2)
            })
        );
        // The rate-limited Job keeps its slot; the next waits for capacity.
        assert_eq!(verdicts[2], Verdict::Wait(WaitReason::FleetAtCapacity));
        bucket.take(30, at(0));
        assert!(bucket.available(30, at(1)) < 1.0);
        assert!(bucket.available(30, at(2)) >= 1.0);
    }

    #[test]
    fn a_bucket_admits_at_its_rate_over_two_minutes() {
        let mut bucket = TokenBucket::full(30, at(0));
        let mut admitted = 0;
        for tenth in 0..1200 {
            let now = Timestamp::from_millisecond(at(0).as_millisecond() + tenth * 100).unwrap();
            if bucket.available(30, now) >= 1.0 {
                bucket.take(30, now);
                admitted += 1;
            }
        }
        assert!((60..=61).contains(&admitted), "{admitted}");
    }

    /// A small deterministic generator, so the property test needs no crate.
    struct Lcg(u64);
    impl Lcg {
        fn next(&mut self, below: u64) -> u64 {
            self.0 = self
                .0
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            (self.0 >> 33) % below
        }
    }

    #[test]
    fn capacity_and_key_limits_are_never_exceeded() {
        for seed in 0..200 {
            let mut rng = Lcg(seed);
            let capacity = 1 + rng.next(10) as u32;
            let key_limit = 1 + rng.next(3) as u32;
            let limits = Limits {
                capacity,
                per_key_concurrency: Some(key_limit),
                jobs_per_minute: None,
            };
            let keys = ["k0", "k1", "k2", "k3"];
            let tenants = ["t0", "t1", "t2"];
            let mut waiting: Vec<Job> = Vec::new();
            let mut held: Vec<(String, Option<String>)> = Vec::new();
            let mut served = Served::new();
            for step in 0..200i64 {
                for _ in 0..rng.next(4) {
                    let mut j = job(
                        &format!("j{step}-{}", rng.next(1000)),
                        tenants[rng.next(3) as usize],
                        step,
                    );
                    j.priority = rng.next(3) as i32;
                    j.key = (rng.next(3) > 0).then(|| keys[rng.next(4) as usize].to_owned());
                    waiting.push(j);
                }
                if !held.is_empty() && rng.next(2) == 0 {
                    held.remove(rng.next(held.len() as u64) as usize);
                }
                let holders: Vec<Holder<'_>> = held
                    .iter()
                    .map(|(f, k)| Holder {
                        fairness_key: f,
                        concurrency_key: k.as_deref(),
                    })
                    .collect();
                let verdicts = decide(
                    &limits,
                    &holders,
                    &candidates(&waiting),
                    &served,
                    None,
                    at(step),
                );
                let mut admitted = Vec::new();
                for (index, verdict) in verdicts.iter().enumerate().rev() {
                    if *verdict == Verdict::Admit {
                        admitted.push(waiting.remove(index));
                    }
                }
                for j in admitted {
                    served.insert(j.fairness.clone(), step as u64);
                    held.push((j.fairness, j.key));
                }
                assert!(held.len() as u32 <= capacity, "seed {seed}: over capacity");
                for key in keys {
                    let on_key = held
                        .iter()
                        .filter(|(_, k)| k.as_deref() == Some(key))
                        .count();
                    assert!(
                        on_key as u32 <= key_limit,
                        "seed {seed}: key {key} over its limit"
                    );
                }
                // Nothing admissible is left waiting while a slot is free.
                if (held.len() as u32) < capacity {
                    assert!(
                        waiting.iter().all(|j| j.key.as_deref().is_some_and(|k| {
                            held.iter().filter(|(_, h)| h.as_deref() == Some(k)).count() as u32
                                >= key_limit
                        })),
                        "seed {seed}: a free slot was left unused"
                    );
                }
            }
        }
    }
}
