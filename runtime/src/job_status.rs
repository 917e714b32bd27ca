//! The one conditioned writer of Job status (filled in with the typed transitions).
