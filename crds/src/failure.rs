//! Why a Job attempt failed: the closed set of reasons Drover writes to
//! `status.error.reason`, to the `Failed` condition and to metric labels.
//!
//! `JobError.reason` stays a string in the CRD on purpose: a newer worker may
//! write a reason an older operator does not know, and that must never make
//! the Job unreadable. Writers use this enum; readers parse with [`FailureReason::parse`].

use std::fmt;

/// Declares the reasons once: the enum, `ALL` and the CamelCase names.
macro_rules! failure_reasons {
    ($($(#[doc = $doc:literal])* $variant:ident,)+) => {
        /// Why an attempt failed (CamelCase in status, logs and metrics).
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum FailureReason {
            $($(#[doc = $doc])* $variant,)+
        }

        impl FailureReason {
            /// Every reason, for documentation and exhaustive tests.
            pub const ALL: &'static [FailureReason] = &[$(FailureReason::$variant,)+];

            /// The name written to `status.error.reason`.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(FailureReason::$variant => stringify!($variant),)+
                }
            }
        }
    };
}

failure_reasons! {
    // Decided by the operator.
    /// The Job names a PipelineWorker that does not exist in its namespace.
    WorkerNotFound,
    /// The input does not match the pipeline's input schema (never retried).
    InvalidInput,
    /// A running attempt outlived its timeout and its worker did not stop it.
    DeadlineExceeded,
    /// Every attempt failed; the last one's reason is in the message.
    MaxAttemptsExceeded,
    /// The worker running the attempt stopped renewing its claim.
    WorkerLost,
    /// The result is larger than a Job keeps and names no URL to keep instead.
    ResultTooLarge,
    /// Draining workers handed the Job back unfinished too many times: it
    /// needs longer than its fleet's pods are given to finish.
    ReleasedTooOften,
    // Decided by a worker, for any pipeline.
    /// A step ran longer than `timeouts.stepSeconds`.
    StepTimeout,
    /// The attempt ran longer than the Job's timeout.
    JobTimeout,
    /// The pipeline panicked; the worker caught it.
    WorkerPanicked,
    // The sleep pipeline (diagnostics and tests).
    /// The input asked this attempt to fail.
    Told,
    /// The effect file of the attempt could not be created.
    EffectNotRecorded,
    // The consensus pipeline.
    /// The fleet has no `consensus` settings.
    ConsensusNotConfigured,
    /// The HTTP client for the model API could not be built.
    HttpClientUnavailable,
    /// The expand step got no usable answer from the model.
    ExpandFailed,
    /// A persona review got no usable answer from the model.
    PersonaFailed,
    /// The model API refused the key (HTTP 401 or 403); never retried.
    ModelUnauthorized,
    // The assembly pipeline.
    /// An input or output URL is not one the worker can use.
    InvalidStorageUrl,
    /// An input object does not exist.
    ObjectNotFound,
    /// An input object is larger than the fleet's `assembly.storage.maxObjectBytes`.
    ObjectTooLarge,
    /// An input URL or the model API resolved (or redirected) to an address
    /// the fleet does not allow: loopback, link-local or cluster-internal.
    AddressRefused,
    /// Object storage refused the worker's credentials.
    StorageAccessDenied,
    /// Object storage could not be reached.
    StorageUnavailable,
    /// The output location cannot be written.
    OutputNotWritable,
    /// An input is not audio the worker can decode.
    UndecodableAudio,
    /// Resampling an input failed.
    ResampleFailed,
    /// Measuring loudness failed.
    LoudnessMeasurementFailed,
    /// Encoding the output failed.
    EncodeFailed,
    // The render pipeline (an outside provider).
    /// The fleet has no `render` settings.
    RenderNotConfigured,
    /// The provider refused or failed the request, or answered something
    /// the fleet's JSON pointers cannot read.
    ProviderFailed,
    /// The provider could not be reached or answered 5xx.
    ProviderUnavailable,
    /// The provider did not finish within `render.waitTimeoutSeconds`.
    ProviderTimeout,
}

impl FailureReason {
    /// The reason a status string names, if this build knows it.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.iter().copied().find(|r| r.as_str() == name)
    }
}

impl fmt::Display for FailureReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_parses_back_from_its_name() {
        for &reason in FailureReason::ALL {
            assert_eq!(FailureReason::parse(reason.as_str()), Some(reason));
        }
    }

    #[test]
    fn names_are_camel_case_and_unknown_names_are_none() {
        assert_eq!(
            FailureReason::MaxAttemptsExceeded.as_str(),
            "MaxAttemptsExceeded"
        );
        assert_eq!(FailureReason::parse("SomethingNew"), None);
    }
}
