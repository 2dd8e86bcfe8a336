//! Rules for holding a job back (`gaffer hold`, `--hold`) and releasing it: a held job's tasks
//! that have not started stay pending; running ones go on.

use super::{Core, CoreError, Effects};
use gaffer_api::{JobId, JobState, UnixMs};

impl<E: Effects> Core<E> {
    /// Holds job `id` (`hold`) or releases it; answers its state. Holding a held job, or
    /// releasing one that is not held, changes nothing.
    pub(super) fn set_hold(
        &mut self,
        id: JobId,
        hold: bool,
        now: UnixMs,
    ) -> Result<JobState, CoreError> {
        let Some(job) = self.jobs.get_mut(&id) else {
            let row = self
                .store
                .get_job(id)
                .map_err(|e| CoreError::Unavailable(e.to_string()))?
                .ok_or(CoreError::NotFound(id))?;
            if self.batch.delete_jobs.contains(&id) {
                return Err(CoreError::NotFound(id));
            }
            let verb = if hold { "hold" } else { "release" };
            return Err(CoreError::Conflict(format!(
                "job {id} is {}: there is nothing to {verb}",
                row.state
            )));
        };
        if job.row.kill_requested {
            return Err(CoreError::Conflict(format!("job {id} was killed")));
        }
        let state = job.row.state;
        if job.row.held == hold {
            return Ok(state);
        }
        job.row.held = hold;
        self.dirty_jobs.insert(id);
        let (to, detail) = if hold {
            (
                "held",
                "tasks that have not started wait for `gaffer release`",
            )
        } else {
            ("released", "")
        };
        self.event(now, id, None, None, to, detail.to_string());
        if !hold {
            self.set_reason(id, None);
        }
        self.requeue(id);
        Ok(state)
    }
}
