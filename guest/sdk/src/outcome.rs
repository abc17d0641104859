//! How a job ends: building its [`JobOutput`], and the [`JobError`] a failed
//! model call becomes.
//!
//! Owns the mapping every handler shares: rate limits and outages are worth
//! another attempt, refusals are not. It must not decide when a handler gives
//! up for reasons of its own; those errors are built where they arise.

use crate::{ContentBlock, JobError, JobOutput, ModelError, RetryHint};

impl JobOutput {
    /// The job's result (stored as JSON text, so it always parses) and its
    /// content blocks, plain ([`Block`](crate::content::Block)) or generated.
    pub fn new<B: Into<ContentBlock>>(result: serde_json::Value, blocks: impl IntoIterator<Item = B>) -> Self {
        JobOutput {
            result: result.to_string(),
            blocks: blocks.into_iter().map(Into::into).collect(),
        }
    }
}

impl JobError {
    /// Why the job failed, whether it will be retried or not.
    pub fn reason(&self) -> &str {
        match self {
            JobError::Retry(hint) => &hint.reason,
            JobError::Reject(reason) => reason,
        }
    }
}

/// How a failed model call ends the job: rate limits and outages are retried
/// (after the wait the backend asked for, if any); refusals are final.
impl From<ModelError> for JobError {
    fn from(error: ModelError) -> Self {
        match error {
            ModelError::RateLimited(after_ms) => JobError::Retry(RetryHint {
                reason: "model rate-limited".to_owned(),
                after_ms,
            }),
            ModelError::Unavailable(reason) => JobError::Retry(RetryHint { reason, after_ms: None }),
            ModelError::Rejected(reason) | ModelError::Denied(reason) => JobError::Reject(reason),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::content::Block;

    fn retry(reason: &str, after_ms: Option<u64>) -> JobError {
        JobError::Retry(RetryHint {
            reason: reason.to_owned(),
            after_ms,
        })
    }

    #[test]
    fn model_errors_map_to_retry_or_reject() {
        let cases = [
            (
                ModelError::RateLimited(Some(1500)),
                retry("model rate-limited", Some(1500)),
            ),
            (ModelError::RateLimited(None), retry("model rate-limited", None)),
            (
                ModelError::Unavailable("502 Bad Gateway".to_owned()),
                retry("502 Bad Gateway", None),
            ),
            (
                ModelError::Rejected("unknown model".to_owned()),
                JobError::Reject("unknown model".to_owned()),
            ),
            (
                ModelError::Denied("call budget used up".to_owned()),
                JobError::Reject("call budget used up".to_owned()),
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(JobError::from(error), expected);
        }
    }

    #[test]
    fn the_reason_of_either_kind() {
        assert_eq!(retry("busy", Some(5)).reason(), "busy");
        assert_eq!(JobError::Reject("no".to_owned()).reason(), "no");
    }

    #[test]
    fn output_of_a_json_result_and_blocks() {
        let output = JobOutput::new(json!({"answer": "4", "n": 1}), [Block::Text("4".into())]);
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&output.result).unwrap(),
            json!({"answer": "4", "n": 1})
        );
        assert_eq!(output.blocks, [ContentBlock::Text("4".into())]);

        let generated = JobOutput::new(json!(null), Vec::<ContentBlock>::new());
        assert_eq!((generated.result.as_str(), generated.blocks.len()), ("null", 0));
    }
}
