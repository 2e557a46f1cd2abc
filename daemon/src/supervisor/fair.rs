//! Fair turns on a shared daemon: at equal priority the running slots go round-robin between
//! users, not first come first served, so one user's fifty queued jobs do not hold the box
//! until they are all done; `max_running_per_user` can also cap one user's running jobs.
//!
//! Within one priority, a user who runs `r` jobs has their `k`-th waiting job (in submit order)
//! at turn `r + k`; lower turns go first. Equal turns go to the user whose last job started
//! longest ago (never: first), then in submit order. Higher priorities still go first.

use std::cmp::Reverse;
use std::collections::HashMap;

use orpo_api::JobView;

use crate::store::spec_of;

/// The queued jobs (in queue order) in the order they get slots, and those that wait because
/// their owner runs `cap` jobs already (0: no cap), with the reason.
pub fn order(
    queued: Vec<JobView>,
    running: &HashMap<String, usize>,
    last_start: &HashMap<String, u64>,
    cap: usize,
) -> (Vec<JobView>, Vec<(u64, String)>) {
    let mut seen: HashMap<&str, usize> = HashMap::new();
    let mut keyed = Vec::with_capacity(queued.len());
    for (pos, job) in queued.iter().enumerate() {
        let r = running.get(&job.owner).copied().unwrap_or(0);
        let k = seen.entry(job.owner.as_str()).or_insert(0);
        let turn = r + *k;
        *k += 1;
        // Never started: 0, before anyone who has.
        let last = last_start.get(&job.owner).copied().unwrap_or(0);
        keyed.push((Reverse(spec_of(job).priority), turn, last, pos));
    }
    let mut idx: Vec<usize> = (0..queued.len()).collect();
    idx.sort_by_key(|&i| keyed[i]);
    let mut slots = queued.into_iter().map(Some).collect::<Vec<_>>();
    let (mut out, mut capped) = (Vec::new(), Vec::new());
    for i in idx {
        let job = slots[i].take().expect("each index once");
        let turn = keyed[i].1;
        if cap > 0 && turn >= cap {
            let r = running.get(&job.owner).copied().unwrap_or(0);
            capped.push((
                job.id,
                format!(
                    "waiting: {} runs {r} job(s) and may run {cap} at once \
                     (max_running_per_user = {cap})",
                    job.owner
                ),
            ));
        } else {
            out.push(job);
        }
    }
    (out, capped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use orpo_api::{JobSpec, JobState};

    fn job(id: u64, owner: &str, priority: i32) -> JobView {
        let spec = JobSpec {
            priority,
            ..JobSpec::default()
        };
        JobView {
            id,
            name: String::new(),
            owner: owner.into(),
            state: JobState::Queued,
            pending_reason: None,
            device: None,
            base_precision: None,
            progress: Default::default(),
            metrics: None,
            eval_metrics: None,
            memory: Default::default(),
            error: None,
            attempts: 0,
            created_at: String::new(),
            started_at: None,
            finished_at: None,
            spec: Some(spec),
        }
    }

    fn ids(jobs: &[JobView]) -> Vec<u64> {
        jobs.iter().map(|j| j.id).collect()
    }

    #[test]
    fn equal_priorities_take_turns_between_users() {
        // Alice queued three jobs before bob and carol queued one each.
        let queue = vec![
            job(1, "alice", 0),
            job(2, "alice", 0),
            job(3, "alice", 0),
            job(4, "bob", 0),
            job(5, "carol", 0),
        ];
        let (none, never) = (HashMap::new(), HashMap::new());
        let (order, capped) = order(queue.clone(), &none, &never, 0);
        assert_eq!(ids(&order), [1, 4, 5, 2, 3]);
        assert!(capped.is_empty());
        // Alice runs one job: bob and carol go first.
        let running = HashMap::from([("alice".to_string(), 1)]);
        let (order, _) = super::order(queue.clone(), &running, &never, 0);
        assert_eq!(ids(&order), [4, 5, 1, 2, 3]);
        // Equal turns: the user whose last job started longest ago first.
        let last = HashMap::from([("bob".to_string(), 7), ("carol".to_string(), 3)]);
        let (order, _) = super::order(queue.clone(), &none, &last, 0);
        assert_eq!(ids(&order), [1, 5, 4, 2, 3]);
        // A cap of one running job per user.
        let (order, capped) = super::order(queue, &running, &never, 1);
        assert_eq!(ids(&order), [4, 5]);
        assert_eq!(capped.len(), 3);
        assert!(capped[0].1.contains("alice runs 1 job(s)"), "{capped:?}");
        assert!(capped[0].1.contains("max_running_per_user = 1"));
    }

    #[test]
    fn higher_priorities_still_go_first() {
        let queue = vec![job(3, "bob", 5), job(1, "alice", 0), job(2, "bob", 0)];
        let running = HashMap::from([("bob".to_string(), 2)]);
        let (order, _) = order(queue, &running, &HashMap::new(), 0);
        assert_eq!(ids(&order), [3, 1, 2]);
    }
}
