//! Identifiers: jobs are numbered by the server and shown as `j-000123`; a task is a job plus an
//! array index; an attempt key adds the 1-based attempt number.

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// A job's id. Displayed and serialised as `j-` followed by at least six digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "j-{:06}", self.0)
    }
}

/// Why a string is not a job id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BadJobId(pub String);

impl fmt::Display for BadJobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "`{}` is not a job id (expected e.g. j-000042 or 42)",
            self.0
        )
    }
}

impl std::error::Error for BadJobId {}

impl FromStr for JobId {
    type Err = BadJobId;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let digits = s.strip_prefix("j-").unwrap_or(s);
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(BadJobId(s.to_string()));
        }
        digits
            .parse::<u64>()
            .map(JobId)
            .map_err(|_| BadJobId(s.to_string()))
    }
}

impl Serialize for JobId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for JobId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One attempt of one task: `j-000123.4#2` is attempt 2 of task 4 of job 123.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct AttemptKey {
    /// The job.
    pub job: JobId,
    /// The task's array index (0 for a job without an array).
    pub index: u32,
    /// 1-based attempt number.
    pub attempt: u32,
}

impl AttemptKey {
    /// The task id shown to users and given to tasks as `GAFFER_TASK_ID`.
    pub fn task_id(&self) -> String {
        format!("{}.{}", self.job, self.index)
    }

    /// A relative directory path unique to this attempt.
    pub fn rel_dir(&self) -> String {
        format!("{}/{}/{}", self.job, self.index, self.attempt)
    }
}

impl fmt::Display for AttemptKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}#{}", self.job, self.index, self.attempt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids_round_trip_and_accept_bare_numbers() {
        assert_eq!(JobId(42).to_string(), "j-000042");
        assert_eq!("j-000042".parse::<JobId>().unwrap(), JobId(42));
        assert_eq!("42".parse::<JobId>().unwrap(), JobId(42));
        assert_eq!("j-1234567".parse::<JobId>().unwrap(), JobId(1234567));
        assert!("j-".parse::<JobId>().is_err());
        assert!("job".parse::<JobId>().is_err());
        assert!("j-12x".parse::<JobId>().is_err());
    }
}
