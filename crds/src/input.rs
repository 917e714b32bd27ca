//! The input each pipeline accepts. The operator checks a Job's `spec.input`
//! against it before queueing, so a malformed Job fails at once with
//! InvalidInput instead of failing on a worker after a trip through Pub/Sub;
//! the worker parses the same types, so both sides agree by construction.

use serde::{Deserialize, Serialize};

use crate::Pipeline;

/// Input of the diagnostic `sleep` pipeline.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SleepInput {
    /// How long the single `sleep` step lasts.
    pub duration_millis: u64,
    /// Attempts (from 1) that fail instead of sleeping.
    #[serde(default)]
    pub fail_on_attempts: Vec<i32>,
    /// Whether those failures may be retried. Default true.
    #[serde(default = "default_true")]
    pub fail_retryable: bool,
    /// A directory where every completed run leaves `<namespace>_<name>_<attempt>`,
    /// so a test can count effects.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effects_dir: Option<String>,
    /// Memory the step holds (written, so it is resident) while it sleeps,
    /// in MiB: shows what a fleet's memory limit does to a Job. At most
    /// `MAX_HOLD_MIB`.
    #[serde(default, rename = "holdMiB", skip_serializing_if = "is_zero")]
    pub hold_mib: u32,
}

/// The most memory a sleep step may be told to hold.
pub const MAX_HOLD_MIB: u32 = 4096;

fn is_zero(n: &u32) -> bool {
    *n == 0
}

fn default_true() -> bool {
    true
}

/// Input of the `render` pipeline: what the outside provider is asked.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RenderInput {
    /// The JSON object POSTed to the provider's submit URL (the worker adds
    /// `callbackUrl` when the provider is to call back).
    pub request: serde_json::Map<String, serde_json::Value>,
}

/// Largest `input.request` the render pipeline sends, in bytes of JSON.
pub const MAX_RENDER_REQUEST_BYTES: usize = 64 * 1024;

/// Where assembly inputs may come from, and where its output may go.
const READABLE_SCHEMES: [&str; 5] = ["file://", "gs://", "s3://", "https://", "http://"];
const WRITABLE_SCHEMES: [&str; 3] = ["file://", "gs://", "s3://"];

/// Longest sleep the diagnostic pipeline accepts: one day.
const MAX_SLEEP_MILLIS: u64 = 86_400_000;

/// Input of the `consensus` pipeline.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsensusInput {
    /// The idea or proposal to review.
    pub text: String,
    /// Background the reviewers should know.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
}

/// Input of the `assembly` pipeline.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AssemblyInput {
    pub episode_id: String,
    /// URL of the main content (`file://`, `gs://`, `s3://`, `https://`).
    pub main_url: String,
    pub template: AssemblyTemplate,
    /// Where the finished episode is written.
    pub output_url: String,
}

/// Intro, outro, music bed and mixing settings of an episode.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AssemblyTemplate {
    /// URL of the intro, played before the main content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub intro_url: Option<String>,
    /// URL of the outro, played after the main content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outro_url: Option<String>,
    /// URL of music laid under the main content (looped when shorter),
    /// ducked while the voice speaks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub music_bed_url: Option<String>,
    /// Length of the equal-power crossfades between intro, main content and
    /// outro, 0 to 30 seconds. Default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crossfade_seconds: Option<f64>,
    /// Integrated loudness of the episode, in LUFS (-40 to -5). Default: the
    /// fleet's `assembly.defaultLoudnessLufs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loudness_lufs: Option<f64>,
    /// `mp3` (128 kb/s CBR, the default), `wav` (16-bit PCM) or `flac`
    /// (16-bit, lossless).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<String>,
}

/// The file formats an episode is written in (`template.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum OutputFormat {
    /// MP3, 128 kb/s constant bit rate: the default.
    Mp3,
    /// WAV, 16-bit PCM.
    Wav,
    /// FLAC, 16-bit, lossless.
    Flac,
}

impl OutputFormat {
    /// Every format, in the order messages list them.
    pub const ALL: [Self; 3] = [Self::Mp3, Self::Wav, Self::Flac];

    /// The format `template.format` names; `None` for a name it does not know.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.as_str() == name)
    }

    /// The name a template uses, also the usual file extension.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mp3 => "mp3",
            Self::Wav => "wav",
            Self::Flac => "flac",
        }
    }

    /// "mp3, wav or flac", for messages that refuse another name.
    pub fn choices() -> String {
        let names: Vec<&str> = Self::ALL.iter().map(|f| f.as_str()).collect();
        match names.split_last() {
            Some((last, rest)) if !rest.is_empty() => format!("{} or {last}", rest.join(", ")),
            _ => names.concat(),
        }
    }
}

/// Why an input was refused, in words for `kubectl describe`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("spec.input is not valid {pipeline} input: {reason}")]
pub struct InvalidInput {
    pub pipeline: &'static str,
    pub reason: String,
}

/// Checks `input` against the pipeline's input type and rules.
pub fn validate(pipeline: Pipeline, input: &serde_json::Value) -> Result<(), InvalidInput> {
    let invalid = |reason: String| InvalidInput {
        pipeline: pipeline.as_str(),
        reason,
    };
    match pipeline {
        Pipeline::Sleep => {
            let sleep: SleepInput = parse(input).map_err(invalid)?;
            if sleep.duration_millis > MAX_SLEEP_MILLIS {
                return Err(invalid(format!(
                    "durationMillis {} is more than a day",
                    sleep.duration_millis
                )));
            }
            if sleep.hold_mib > MAX_HOLD_MIB {
                return Err(invalid(format!(
                    "holdMiB {} is more than {MAX_HOLD_MIB}",
                    sleep.hold_mib
                )));
            }
            if let Some(bad) = sleep.fail_on_attempts.iter().find(|a| **a < 1) {
                return Err(invalid(format!(
                    "failOnAttempts has {bad}; attempts count from 1"
                )));
            }
        }
        Pipeline::Consensus => {
            let consensus: ConsensusInput = parse(input).map_err(invalid)?;
            if consensus.text.trim().is_empty() {
                return Err(invalid("text is empty".into()));
            }
        }
        Pipeline::Render => {
            let render: RenderInput = parse(input).map_err(invalid)?;
            let size = serde_json::to_vec(&render.request).map_or(0, |b| b.len());
            if size > MAX_RENDER_REQUEST_BYTES {
                return Err(invalid(format!(
                    "request is {size} bytes of JSON, more than {MAX_RENDER_REQUEST_BYTES}"
                )));
            }
        }
        Pipeline::Assembly => {
            let assembly: AssemblyInput = parse(input).map_err(invalid)?;
            let template = &assembly.template;
            let sources = [
                ("mainUrl", Some(&assembly.main_url)),
                ("template.introUrl", template.intro_url.as_ref()),
                ("template.outroUrl", template.outro_url.as_ref()),
                ("template.musicBedUrl", template.music_bed_url.as_ref()),
            ];
            for (field, url) in sources.into_iter().filter_map(|(f, u)| Some((f, u?))) {
                if !READABLE_SCHEMES
                    .iter()
                    .any(|scheme| url.starts_with(scheme))
                {
                    return Err(invalid(format!(
                        "{field} {url:?} is not a file://, gs://, s3:// or https:// URL"
                    )));
                }
            }
            let output = &assembly.output_url;
            if !WRITABLE_SCHEMES
                .iter()
                .any(|scheme| output.starts_with(scheme))
            {
                return Err(invalid(format!(
                    "outputUrl {output:?} is not a file://, gs:// or s3:// URL (https:// is read-only)"
                )));
            }
            if let Some(format) = &template.format
                && OutputFormat::from_name(format).is_none()
            {
                return Err(invalid(format!(
                    "template.format {format:?} is not {}",
                    OutputFormat::choices()
                )));
            }
            if let Some(seconds) = template.crossfade_seconds
                && !(0.0..=30.0).contains(&seconds)
            {
                return Err(invalid(format!(
                    "template.crossfadeSeconds {seconds} is not between 0 and 30"
                )));
            }
            if let Some(lufs) = template.loudness_lufs
                && !(-40.0..=-5.0).contains(&lufs)
            {
                return Err(invalid(format!(
                    "template.loudnessLufs {lufs} is not between -40 and -5"
                )));
            }
        }
    }
    Ok(())
}

fn parse<T: serde::de::DeserializeOwned>(input: &serde_json::Value) -> Result<T, String> {
    T::deserialize(input).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sleep_input_needs_a_duration() {
        assert!(validate(Pipeline::Sleep, &json!({"durationMillis": 10})).is_ok());
        let err = validate(Pipeline::Sleep, &json!({})).unwrap_err();
        assert_eq!(
            err.to_string(),
            "spec.input is not valid sleep input: missing field `durationMillis`"
        );
    }

    #[test]
    fn unknown_fields_are_named() {
        let err = validate(
            Pipeline::Sleep,
            &json!({"durationMillis": 1, "sleepy": true}),
        )
        .unwrap_err();
        assert!(err.reason.contains("unknown field `sleepy`"), "{err}");
    }

    #[test]
    fn attempts_count_from_one() {
        let err = validate(
            Pipeline::Sleep,
            &json!({"durationMillis": 1, "failOnAttempts": [0]}),
        )
        .unwrap_err();
        assert!(err.reason.contains("attempts count from 1"), "{err}");
    }

    #[test]
    fn consensus_needs_text() {
        assert!(validate(Pipeline::Consensus, &json!({"text": "Cache billing reads"})).is_ok());
        assert!(validate(Pipeline::Consensus, &json!({"text": "  "})).is_err());
        assert!(validate(Pipeline::Render, &json!({"request": {"prompt": "a fox"}})).is_ok());
        assert!(validate(Pipeline::Render, &json!({"request": "a fox"})).is_err());
        assert!(validate(Pipeline::Render, &json!({})).is_err());
    }

    #[test]
    fn assembly_urls_and_format_are_checked() {
        let good = json!({
            "episodeId": "42", "mainUrl": "file:///m.wav", "outputUrl": "s3://b/o.mp3",
            "template": {"format": "mp3", "crossfadeSeconds": 2.0},
        });
        assert!(validate(Pipeline::Assembly, &good).is_ok());
        let mut bad = good.clone();
        bad["mainUrl"] = json!("ftp://x/m.wav");
        assert!(
            validate(Pipeline::Assembly, &bad)
                .unwrap_err()
                .reason
                .contains("mainUrl")
        );
        let mut bad = good.clone();
        bad["template"]["format"] = json!("ogg");
        assert_eq!(
            validate(Pipeline::Assembly, &bad).unwrap_err().reason,
            "template.format \"ogg\" is not mp3, wav or flac"
        );
        for format in OutputFormat::ALL {
            let mut ok = good.clone();
            ok["template"]["format"] = json!(format.as_str());
            assert_eq!(validate(Pipeline::Assembly, &ok), Ok(()), "{format:?}");
            assert_eq!(OutputFormat::from_name(format.as_str()), Some(format));
        }
    }

    #[test]
    fn assembly_output_cannot_go_to_https_and_template_urls_are_checked() {
        let good = json!({
            "episodeId": "42", "mainUrl": "https://cdn.example/m.mp3", "outputUrl": "gs://b/o.mp3",
            "template": {"introUrl": "s3://b/intro.wav"},
        });
        assert!(validate(Pipeline::Assembly, &good).is_ok());
        let mut bad = good.clone();
        bad["outputUrl"] = json!("https://cdn.example/o.mp3");
        let reason = validate(Pipeline::Assembly, &bad).unwrap_err().reason;
        assert!(reason.contains("read-only"), "{reason}");
        let mut bad = good.clone();
        bad["template"]["musicBedUrl"] = json!("/local/bed.wav");
        let reason = validate(Pipeline::Assembly, &bad).unwrap_err().reason;
        assert!(reason.contains("template.musicBedUrl"), "{reason}");
        let mut bad = good;
        bad["template"]["crossfadeSeconds"] = json!(-1.0);
        let reason = validate(Pipeline::Assembly, &bad).unwrap_err().reason;
        assert!(reason.contains("crossfadeSeconds"), "{reason}");
    }

    #[test]
    fn samples_are_valid() {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/samples");
        for (file, pipeline) in [
            ("job-sleep.yaml", Pipeline::Sleep),
            ("job-consensus.yaml", Pipeline::Consensus),
            ("job-assembly.yaml", Pipeline::Assembly),
            ("job-assembly-wav.yaml", Pipeline::Assembly),
            ("job-assembly-flac.yaml", Pipeline::Assembly),
        ] {
            let text = std::fs::read_to_string(root.join(file)).unwrap();
            let job: crate::Job = serde_yaml::from_str(&text).unwrap();
            assert_eq!(validate(pipeline, &job.spec.input), Ok(()), "{file}");
        }
    }
}
