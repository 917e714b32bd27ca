//! The `assembly` pipeline: a podcast episode from an intro, the main
//! content, an outro and an optional music bed. Each step is a pure, CPU-bound
//! core (in its own module, tested without I/O) run on the blocking pool,
//! with the inputs of a step processed in parallel; only `fetch` and
//! `upload` touch the network.

pub mod decode;
pub mod encode;
pub mod loudness;
pub mod mix;
pub mod resample;
pub mod storage;

use bytes::Bytes;
use drover_crds::FailureReason;
use drover_crds::input::AssemblyInput;
use drover_crds::pipeline_worker::AssemblySpec;
use serde::Deserialize;
use serde_json::{Value, json};

use self::encode::Format;
use self::loudness::Measurement;
use self::storage::Location;
use super::{Context, Failure};

pub const STEPS: [&str; 7] = [
    "fetch",
    "decode",
    "resample",
    "normalize",
    "mix",
    "encode",
    "upload",
];

/// Crossfade between intro, main content and outro when the template sets none.
pub const DEFAULT_CROSSFADE_SECONDS: f64 = 2.0;
const MAX_CROSSFADE_SECONDS: f64 = 30.0;

/// Planar audio: one `Vec` of samples per channel, all the same length.
#[derive(Debug, Clone, PartialEq)]
pub struct Audio {
    pub rate: u32,
    pub channels: Vec<Vec<f32>>,
}

impl Audio {
    pub fn frames(&self) -> usize {
        self.channels.first().map_or(0, Vec::len)
    }

    pub fn seconds(&self) -> f64 {
        self.frames() as f64 / f64::from(self.rate)
    }
}

/// What a piece of the episode is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Intro,
    Main,
    Outro,
    MusicBed,
}

/// One input file, fetched.
#[derive(Debug, Clone)]
pub struct Source {
    pub role: Role,
    /// Its URL, for messages.
    pub name: String,
    pub extension: Option<String>,
    pub bytes: Bytes,
}

/// One input, decoded.
#[derive(Debug, Clone)]
pub struct Track {
    pub role: Role,
    pub name: String,
    pub audio: Audio,
}

/// How an episode is made: the input's template over the fleet's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Plan {
    pub sample_rate: u32,
    pub loudness_lufs: f64,
    pub true_peak_ceiling_dbtp: f64,
    pub crossfade_seconds: f64,
    pub format: Format,
}

impl Plan {
    pub fn new(input: &AssemblyInput, fleet: Option<&AssemblySpec>) -> Result<Self, Failure> {
        let invalid = |message: String| Failure {
            reason: FailureReason::InvalidInput,
            message,
            retryable: false,
        };
        let crossfade_seconds = input
            .template
            .crossfade_seconds
            .unwrap_or(DEFAULT_CROSSFADE_SECONDS);
        if !(0.0..=MAX_CROSSFADE_SECONDS).contains(&crossfade_seconds) {
            return Err(invalid(format!(
                "template.crossfadeSeconds {crossfade_seconds} is not between 0 and {MAX_CROSSFADE_SECONDS}"
            )));
        }
        let sample_rate = fleet.map_or(44_100, |f| f.sample_rate);
        Ok(Self {
            sample_rate: u32::try_from(sample_rate)
                .map_err(|_| invalid(format!("sampleRate {sample_rate} is negative")))?,
            loudness_lufs: input
                .template
                .loudness_lufs
                .or(fleet.map(|f| f.default_loudness_lufs))
                .unwrap_or(-16.0),
            true_peak_ceiling_dbtp: fleet.map_or(-1.0, |f| f.true_peak_ceiling_dbtp),
            crossfade_seconds,
            format: Format::parse(input.template.format.as_deref())?,
        })
    }
}

/// The finished episode before upload.
#[derive(Debug, Clone)]
pub struct Episode {
    pub audio: Audio,
    pub measured: Measurement,
}

pub async fn run(input: &Value, ctx: &Context<'_>) -> Result<Value, Failure> {
    let input = AssemblyInput::deserialize(input).map_err(|e| Failure {
        reason: FailureReason::InvalidInput,
        message: format!("spec.input is not valid assembly input: {e}"),
        retryable: false,
    })?;
    let settings = ctx.fleet.assembly.as_ref();
    let plan = Plan::new(&input, settings)?;
    let output = Location::parse(&input.output_url, settings)?;
    let mut wanted = vec![(Role::Main, input.main_url.as_str())];
    for (role, url) in [
        (Role::Intro, &input.template.intro_url),
        (Role::Outro, &input.template.outro_url),
        (Role::MusicBed, &input.template.music_bed_url),
    ] {
        if let Some(url) = url {
            wanted.push((role, url.as_str()));
        }
    }
    let locations = wanted
        .into_iter()
        .map(|(role, url)| Ok((role, Location::parse(url, settings)?)))
        .collect::<Result<Vec<_>, Failure>>()?;

    let progress = &ctx.progress;
    let sources = progress.step("fetch", fetch(locations)).await?;
    let tracks = progress
        .step("decode", blocking(move || decode_all(sources)))
        .await?;
    let tracks = progress
        .step(
            "resample",
            blocking(move || resample_all(tracks, plan.sample_rate)),
        )
        .await?;
    let tracks = progress
        .step("normalize", blocking(move || normalize_all(tracks, &plan)))
        .await?;
    let episode = progress
        .step("mix", blocking(move || mix_all(tracks, &plan)))
        .await?;
    let (bytes, episode) = progress
        .step(
            "encode",
            blocking(move || {
                let bytes =
                    encode::encode(&episode.audio.channels, episode.audio.rate, plan.format)?;
                Ok((bytes, episode))
            }),
        )
        .await?;
    let size = bytes.len();
    progress
        .step("upload", output.put(Bytes::from(bytes)))
        .await?;
    Ok(json!({
        "episodeId": input.episode_id,
        "outputUrl": output.url(),
        "format": plan.format.as_str(),
        "sampleRate": episode.audio.rate,
        "channels": episode.audio.channels.len(),
        "durationSeconds": round(episode.audio.seconds(), 3),
        "integratedLufs": round(episode.measured.integrated_lufs, 2),
        "truePeakDbtp": round(episode.measured.true_peak_dbtp, 2),
        "bytes": size,
    }))
}

fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

/// Runs CPU-bound work off the async runtime's threads.
async fn blocking<R: Send + 'static>(
    work: impl FnOnce() -> Result<R, Failure> + Send + 'static,
) -> Result<R, Failure> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| Failure {
            reason: FailureReason::WorkerPanicked,
            message: format!("assembly work stopped unexpectedly: {e}"),
            retryable: true,
        })?
}

async fn fetch(locations: Vec<(Role, Location)>) -> Result<Vec<Source>, Failure> {
    futures::future::try_join_all(locations.into_iter().map(|(role, location)| async move {
        let bytes = location.get().await?;
        Ok(Source {
            role,
            name: location.url().to_owned(),
            extension: location.extension().map(str::to_owned),
            bytes,
        })
    }))
    .await
}

/// Runs `work` on every item at once, one thread each (an episode has at
/// most four inputs), and returns the results in order or the first failure.
fn in_parallel<T: Send, R: Send>(
    items: Vec<T>,
    work: impl Fn(T) -> Result<R, Failure> + Sync,
) -> Result<Vec<R>, Failure> {
    let work = &work;
    std::thread::scope(|scope| {
        let handles: Vec<_> = items
            .into_iter()
            .map(|item| scope.spawn(move || work(item)))
            .collect();
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(Failure {
                        reason: FailureReason::WorkerPanicked,
                        message: "an assembly thread panicked".into(),
                        retryable: true,
                    })
                })
            })
            .collect()
    })
}

pub fn decode_all(sources: Vec<Source>) -> Result<Vec<Track>, Failure> {
    in_parallel(sources, |source| {
        let audio = decode::decode(&source.name, source.extension.as_deref(), source.bytes)?;
        Ok(Track {
            role: source.role,
            name: source.name,
            audio,
        })
    })
}

pub fn resample_all(tracks: Vec<Track>, rate: u32) -> Result<Vec<Track>, Failure> {
    in_parallel(tracks, |track| {
        Ok(Track {
            audio: resample::resample(track.audio, rate)?,
            ..track
        })
    })
}

/// Brings every input to the episode's loudness: each is measured on its
/// own and gained to the target, so an intro mastered hot and a quiet
/// interview meet at the same level. The bed sits under the voice later.
pub fn normalize_all(tracks: Vec<Track>, plan: &Plan) -> Result<Vec<Track>, Failure> {
    in_parallel(tracks, |mut track| {
        let measured = loudness::integrated(&track.audio.channels, track.audio.rate)?;
        loudness::apply_gain(
            &mut track.audio.channels,
            loudness::gain_to(measured, plan.loudness_lufs),
        );
        Ok(track)
    })
}

/// Joins the pieces, lays the ducked bed under the main content and masters
/// the result to the target loudness under the true-peak ceiling.
pub fn mix_all(mut tracks: Vec<Track>, plan: &Plan) -> Result<Episode, Failure> {
    let rate = plan.sample_rate;
    let channels = tracks
        .iter()
        .map(|t| t.audio.channels.len())
        .max()
        .unwrap_or(1)
        .min(2);
    let mut pieces: Vec<(Role, Vec<Vec<f32>>)> = Vec::new();
    let mut bed = None;
    for role in [Role::Intro, Role::Main, Role::Outro, Role::MusicBed] {
        if let Some(at) = tracks.iter().position(|t| t.role == role) {
            let track = tracks.swap_remove(at);
            let conformed = mix::conform_channels(track.audio.channels, channels);
            if role == Role::MusicBed {
                bed = Some(conformed);
            } else {
                pieces.push((role, conformed));
            }
        }
    }
    let crossfade = (plan.crossfade_seconds * f64::from(rate)).round() as usize;
    let refs: Vec<&[Vec<f32>]> = pieces.iter().map(|(_, p)| p.as_slice()).collect();
    let (mut mixed, starts) = mix::join(&refs, channels, crossfade);
    if let Some(bed) = bed
        && let Some(main) = pieces.iter().position(|(role, _)| *role == Role::Main)
    {
        let envelope = mix::duck_envelope(&pieces[main].1, rate);
        mix::add_bed(&mut mixed, &bed, starts[main], &envelope, rate);
    }
    drop(pieces);
    let measured = loudness::master(
        &mut mixed,
        rate,
        plan.loudness_lufs,
        plan.true_peak_ceiling_dbtp,
        plan.loudness_lufs,
    )?;
    Ok(Episode {
        audio: Audio {
            rate,
            channels: mixed,
        },
        measured,
    })
}

/// The whole core from fetched bytes to encoded bytes, without I/O: what
/// the steps do one by one, for the benchmark and tests.
pub fn assemble(sources: Vec<Source>, plan: &Plan) -> Result<(Vec<u8>, Episode), Failure> {
    let tracks = decode_all(sources)?;
    let tracks = resample_all(tracks, plan.sample_rate)?;
    let tracks = normalize_all(tracks, plan)?;
    let episode = mix_all(tracks, plan)?;
    let bytes = encode::encode(&episode.audio.channels, episode.audio.rate, plan.format)?;
    Ok((bytes, episode))
}
