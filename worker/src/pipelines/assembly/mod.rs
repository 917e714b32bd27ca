//! The `assembly` pipeline: a podcast episode from an intro, the main
//! content, an outro and an optional music bed. Memory stays bounded however
//! long the episode: inputs are fetched to local files, decoded and
//! resampled a packet at a time into scratch PCM (measuring each input's
//! loudness on the way), and the mix is rendered from there a block at a
//! time, once to measure it and again to encode it. The figures reported
//! are those of the encoded file, decoded and measured again (`deliver`).
//! Only `fetch` and `upload` touch the network; the CPU work runs on the
//! blocking pool.

pub mod decode;
pub mod deliver;
pub mod encode;
pub mod loudness;
pub mod mix;
pub mod resample;
pub mod spill;
pub mod storage;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;

use drover_crds::FailureReason;
use drover_crds::input::AssemblyInput;
use drover_crds::pipeline_worker::AssemblySpec;
use serde::Deserialize;
use serde_json::{Value, json};

use self::deliver::{Delivered, Pilot, Settings};
use self::encode::{Encoder, Format};
use self::loudness::{LIMITER_MARGIN_DB, Limiter, Meter, db_to_linear, gain_to};
use self::mix::{Input, Render, VoiceEnergy};
use self::resample::Resampler;
use self::spill::{Spill, SpillWriter, scratch_failure};
use self::storage::Location;
use super::{Context, Failure};
use crate::egress;

/// The steps, in order: `decode` also resamples and measures each input,
/// `mix` measures the mix, `encode` encodes and measures what it encoded.
pub const STEPS: [&str; 5] = ["fetch", "decode", "mix", "encode", "upload"];

/// Crossfade between intro, main content and outro when the template sets none.
pub const DEFAULT_CROSSFADE_SECONDS: f64 = 2.0;
const MAX_CROSSFADE_SECONDS: f64 = 30.0;
/// Frames rendered at a time: small next to any memory limit, large enough
/// that per-block work is noise.
const RENDER_FRAMES: usize = 16_384;
/// Rendered blocks queued for the encoder thread.
const ENCODE_QUEUE: usize = 8;

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

/// A stretch of planar audio: one `Vec` per channel, all the same length.
pub type Block = Vec<Vec<f32>>;

/// What a piece of the episode is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Intro,
    Main,
    Outro,
    MusicBed,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Self::Intro => "intro",
            Self::Main => "main",
            Self::Outro => "outro",
            Self::MusicBed => "bed",
        }
    }
}

/// One input file, fetched to local disk.
#[derive(Debug, Clone)]
pub struct Source {
    pub role: Role,
    /// Its URL, for messages.
    pub name: String,
    pub extension: Option<String>,
    pub path: PathBuf,
}

/// One input at the episode's rate, spilled to scratch, with its loudness.
#[derive(Debug, Clone)]
pub struct Track {
    pub role: Role,
    pub name: String,
    pub spill: Spill,
    pub loudness_lufs: f64,
    /// Window energies of the main content, which the bed ducks under.
    pub voice: Option<VoiceEnergy>,
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
            format: encode::format(input.template.format.as_deref())?,
        })
    }
}

/// The encoded episode, on local disk, with its figures as delivered.
#[derive(Debug, Clone)]
pub struct Episode {
    pub path: PathBuf,
    pub rate: u32,
    pub channels: usize,
    pub frames: u64,
    pub delivered: Delivered,
}

impl Episode {
    pub fn seconds(&self) -> f64 {
        self.frames as f64 / f64::from(self.rate)
    }
}

/// A directory for one attempt's files, removed when dropped.
pub struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    /// A new directory under `parent`, named for `label`, unique per call.
    pub fn new(parent: &Path, label: &str) -> Result<Self, Failure> {
        let dir = parent.join(format!("drover-assembly-{label}-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).map_err(|e| scratch_failure(&dir, e))?;
        Ok(Self { dir })
    }

    pub fn path(&self) -> &Path {
        &self.dir
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Where a long step says how far it got: a fraction from 0 to 1.
pub type Report<'a> = &'a (dyn Fn(f64) + Sync);

pub async fn run(raw: &Value, ctx: &Context<'_>) -> Result<Value, Failure> {
    let input = AssemblyInput::deserialize(raw).map_err(|e| Failure {
        reason: FailureReason::InvalidInput,
        message: format!("spec.input is not valid assembly input: {e}"),
        retryable: false,
    })?;
    let settings = ctx.fleet.assembly.as_ref();
    // The operator checked this before queueing; the fleet may have changed since.
    drover_crds::reach::check(ctx.fleet, raw, &egress::cluster_ranges()).map_err(|e| Failure {
        reason: FailureReason::InvalidInput,
        message: e.to_string(),
        retryable: false,
    })?;
    let policy = egress::policy(ctx.fleet);
    let plan = Plan::new(&input, settings)?;
    let output = Location::parse(&input.output_url, settings, &policy)?;
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
        .map(|(role, url)| Ok((role, Location::parse(url, settings, &policy)?)))
        .collect::<Result<Vec<_>, Failure>>()?;
    let attempt = &ctx.attempt;
    let scratch = Scratch::new(
        &std::env::temp_dir(),
        &format!("{}-{}-{}", attempt.namespace, attempt.name, attempt.attempt),
    )?;
    let dir = scratch.path().to_owned();

    let progress = &ctx.progress;
    let reporter = |step: &'static str| {
        let progress = progress.clone();
        move |fraction: f64| progress.set_progress(step, (fraction * 100.0).clamp(0.0, 99.0) as u8)
    };
    let sources = progress.step("fetch", fetch(locations, &dir)).await?;
    let tracks = {
        let (dir, report) = (dir.clone(), reporter("decode"));
        progress
            .step(
                "decode",
                blocking(move || decode_all(sources, plan.sample_rate, &dir, &report)),
            )
            .await?
    };
    let (tracks, first) = {
        let (dir, report) = (dir.clone(), reporter("mix"));
        progress
            .step(
                "mix",
                blocking(move || {
                    let first = measure_mix(&tracks, &plan, &dir, &report)?;
                    Ok((tracks, first))
                }),
            )
            .await?
    };
    let episode = {
        let (dir, report, again) = (dir.clone(), reporter("encode"), progress.clone());
        progress
            .step(
                "encode",
                blocking(move || {
                    encode_delivered(&tracks, &plan, first, &dir, &report, &|why| {
                        again.retried("encode", why)
                    })
                }),
            )
            .await?
    };
    let size = std::fs::metadata(&episode.path)
        .map_err(|e| scratch_failure(&episode.path, e))?
        .len();
    progress
        .step("upload", output.put_file(&episode.path))
        .await?;
    drop(scratch);
    let measured = episode.delivered.measured;
    Ok(json!({
        "episodeId": input.episode_id,
        "outputUrl": output.shown_url(),
        "format": plan.format.as_str(),
        "sampleRate": episode.rate,
        "channels": episode.channels,
        "durationSeconds": round(episode.seconds(), 3),
        "integratedLufs": round(measured.integrated_lufs, 2),
        "truePeakDbtp": round(measured.true_peak_dbtp, 2),
        "encodes": episode.delivered.rounds,
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

async fn fetch(locations: Vec<(Role, Location)>, dir: &Path) -> Result<Vec<Source>, Failure> {
    futures::future::try_join_all(locations.into_iter().map(|(role, location)| async move {
        let extension = location.extension().map(str::to_owned);
        let path = location
            .fetch(&dir.join(format!("{}.input", role.as_str())))
            .await?;
        Ok(Source {
            role,
            name: location.shown_url().to_owned(),
            extension,
            path,
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
            .map(|h| h.join().unwrap_or_else(|_| Err(panicked())))
            .collect()
    })
}

fn panicked() -> Failure {
    Failure {
        reason: FailureReason::WorkerPanicked,
        message: "an assembly thread panicked".into(),
        retryable: true,
    }
}

/// Decodes every input, resamples it to `rate` and spills it to `dir`,
/// measuring its loudness on the way; inputs in parallel.
pub fn decode_all(
    sources: Vec<Source>,
    rate: u32,
    dir: &Path,
    report: Report<'_>,
) -> Result<Vec<Track>, Failure> {
    let mut decoders = Vec::with_capacity(sources.len());
    for source in sources {
        let decoder =
            decode::Decoder::open(&source.name, &source.path, source.extension.as_deref())?;
        decoders.push((source, decoder));
    }
    // Progress counts decoded frames against what the headers declare.
    let expected: u64 = decoders
        .iter()
        .map(|(_, d)| d.expected_frames().unwrap_or(0))
        .sum();
    let done = AtomicU64::new(0);
    in_parallel(decoders, |(source, mut decoder)| {
        let path = dir.join(format!("{}.pcm", source.role.as_str()));
        let mut state: Option<(Resampler, SpillWriter, Meter)> = None;
        let mut voice = (source.role == Role::Main).then(|| VoiceEnergy::new(rate));
        let mut keep = |block: Block, state: &mut (Resampler, SpillWriter, Meter)| {
            if block.first().is_none_or(Vec::is_empty) {
                return Ok(());
            }
            if let Some(voice) = &mut voice {
                voice.add(&block);
            }
            state.2.add(&block)?;
            state.1.write(&block)
        };
        while let Some(block) = decoder.next_block()? {
            let frames = block[0].len() as u64;
            let state = match &mut state {
                Some(state) => state,
                None => {
                    let from = decoder.rate().unwrap_or(rate);
                    let channels = block.len();
                    state.insert((
                        Resampler::new(from, rate, channels)?,
                        SpillWriter::create(&path, channels)?,
                        Meter::new(channels, rate, false)?,
                    ))
                }
            };
            let out = state.0.push(block)?;
            keep(out, state)?;
            let total = done.fetch_add(frames, Ordering::Relaxed) + frames;
            if expected > 0 {
                report(total as f64 / expected as f64);
            }
        }
        let Some(mut state) = state else {
            return Err(Failure {
                reason: FailureReason::UndecodableAudio,
                message: format!("{}: holds no audio", source.name),
                retryable: false,
            });
        };
        let tail = state.0.finish()?;
        keep(tail, &mut state)?;
        let (_, writer, meter) = state;
        if let Some(voice) = &mut voice {
            voice.finish();
        }
        Ok(Track {
            role: source.role,
            name: source.name,
            spill: writer.finish()?,
            loudness_lufs: meter.measurement()?.integrated_lufs,
            voice,
        })
    })
}

/// The episode's channel count: stereo when any input is, mono when all are.
fn channels_of(tracks: &[Track]) -> usize {
    tracks
        .iter()
        .map(|t| t.spill.channels)
        .max()
        .unwrap_or(1)
        .min(2)
}

/// The mix of `tracks` a block at a time, each input gained to the target.
fn render(tracks: &[Track], plan: &Plan) -> Result<Render, Failure> {
    let input = |track: &Track| Input {
        spill: track.spill.clone(),
        gain: db_to_linear(gain_to(track.loudness_lufs, plan.loudness_lufs)) as f32,
    };
    let mut pieces = Vec::new();
    let mut main = 0;
    let mut voice = VoiceEnergy::default();
    for role in [Role::Intro, Role::Main, Role::Outro] {
        if let Some(track) = tracks.iter().find(|t| t.role == role) {
            if role == Role::Main {
                main = pieces.len();
                voice = track.voice.clone().unwrap_or_default();
            }
            pieces.push(input(track));
        }
    }
    let bed = tracks.iter().find(|t| t.role == Role::MusicBed).map(input);
    let crossfade = (plan.crossfade_seconds * f64::from(plan.sample_rate)).round() as usize;
    Render::new(
        pieces,
        main,
        voice,
        bed,
        channels_of(tracks),
        crossfade,
        plan.sample_rate,
    )
}

/// Renders the mix through the limiter at `settings`, handing each
/// mastered block to `sink`; reports the fraction rendered.
fn master(
    tracks: &[Track],
    plan: &Plan,
    settings: Settings,
    report: Report<'_>,
    mut sink: impl FnMut(Block) -> Result<(), Failure>,
) -> Result<u64, Failure> {
    let mut render = render(tracks, plan)?;
    let total = render.total_frames().max(1);
    let gain = db_to_linear(settings.gain_db) as f32;
    let mut limiter = Limiter::new(
        channels_of(tracks),
        plan.sample_rate,
        db_to_linear(settings.limiter_dbfs) as f32,
    );
    let mut rendered = 0u64;
    while let Some(mut block) = render.next_block(RENDER_FRAMES)? {
        rendered += block[0].len() as u64;
        for channel in &mut block {
            for sample in channel.iter_mut() {
                *sample *= gain;
            }
        }
        let out = limiter.push(&block);
        if !out[0].is_empty() {
            sink(out)?;
        }
        report(rendered as f64 / total as f64);
    }
    let out = limiter.finish();
    if !out[0].is_empty() {
        sink(out)?;
    }
    Ok(render.total_frames())
}

/// The `mix` step: renders the mix once at the inputs' own gains, measures
/// it after the limiter and, for a lossy format, what the codec does to a
/// pilot of it; returns the settings the first encode starts from.
pub fn measure_mix(
    tracks: &[Track],
    plan: &Plan,
    dir: &Path,
    report: Report<'_>,
) -> Result<Settings, Failure> {
    let channels = channels_of(tracks);
    let limiter_dbfs = plan.true_peak_ceiling_dbtp - LIMITER_MARGIN_DB;
    let mut meter = Meter::new(channels, plan.sample_rate, false)?;
    let mut pilot = Pilot::new(plan.format, channels, plan.sample_rate, &dir.join("pilot"))?;
    let unity = Settings {
        gain_db: 0.0,
        limiter_dbfs,
    };
    master(tracks, plan, unity, report, |block| {
        meter.add(&block)?;
        match &mut pilot {
            Some(pilot) => pilot.add(&block),
            None => Ok(()),
        }
    })?;
    let mixed = meter.measurement()?.integrated_lufs;
    let shift = match pilot {
        Some(pilot) => pilot.shift_db()?,
        None => 0.0,
    };
    Ok(Settings {
        gain_db: gain_to(mixed, plan.loudness_lufs) - shift,
        limiter_dbfs,
    })
}

/// One round of the `encode` step: the mastered mix encoded to `path` on
/// a thread of its own while this one renders.
fn encode_round(
    tracks: &[Track],
    plan: &Plan,
    settings: Settings,
    path: &Path,
    report: Report<'_>,
) -> Result<u64, Failure> {
    let file = std::fs::File::create(path).map_err(|e| scratch_failure(path, e))?;
    let mut encoder = Encoder::new(
        plan.format,
        channels_of(tracks),
        plan.sample_rate,
        std::io::BufWriter::with_capacity(1 << 20, file),
    )?;
    let (send, receive) = mpsc::sync_channel::<Block>(ENCODE_QUEUE);
    std::thread::scope(|scope| {
        let encoding = scope.spawn(move || {
            for block in receive {
                encoder.write(&block)?;
            }
            encoder.finish()
        });
        // A closed queue means the encoder failed; its error is the one to report.
        let rendered = master(tracks, plan, settings, report, |block| {
            send.send(block).map_err(|_| panicked())
        });
        drop(send);
        let encoded = encoding.join().unwrap_or_else(|_| Err(panicked()));
        encoded?;
        rendered
    })
}

/// The `encode` step: rounds of encode and measure from `first` (see
/// [`deliver::deliver`]); `again` hears why a round is repeated.
pub fn encode_delivered(
    tracks: &[Track],
    plan: &Plan,
    first: Settings,
    dir: &Path,
    report: Report<'_>,
    again: &dyn Fn(&str),
) -> Result<Episode, Failure> {
    let path = dir.join(format!("episode.{}", plan.format.as_str()));
    let mut frames = 0;
    let delivered = deliver::deliver(
        first,
        plan.loudness_lufs,
        plan.true_peak_ceiling_dbtp,
        |settings| {
            // Encoding is most of a round; measuring the file the rest.
            let encoding = |f: f64| report(f * 0.8);
            frames = encode_round(tracks, plan, settings, &path, &encoding)?;
            let measured = deliver::measure_file(&path, plan.format)?;
            report(1.0);
            Ok(measured)
        },
        again,
    )?;
    Ok(Episode {
        path,
        rate: plan.sample_rate,
        channels: channels_of(tracks),
        frames,
        delivered,
    })
}

/// The whole core from fetched files to the encoded, measured episode,
/// without network I/O: what the steps do one by one, for the benchmark
/// and tests. The episode's file lies in `dir`.
pub fn assemble(sources: Vec<Source>, plan: &Plan, dir: &Path) -> Result<Episode, Failure> {
    let quiet = |_: f64| {};
    let tracks = decode_all(sources, plan.sample_rate, dir, &quiet)?;
    let first = measure_mix(&tracks, plan, dir, &quiet)?;
    encode_delivered(&tracks, plan, first, dir, &quiet, &|_| {})
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    fn plan(format: Format) -> Plan {
        Plan {
            sample_rate: 44_100,
            loudness_lufs: -16.0,
            true_peak_ceiling_dbtp: -1.0,
            crossfade_seconds: 0.0,
            format,
        }
    }

    /// Twelve seconds of something like speech: tones and noise in bursts.
    fn speechlike(rate: u32) -> Block {
        let mut seed = 0x2545_f491_u32;
        let mut noise = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 - 0.5
        };
        let frames = 12 * rate as usize;
        let left: Vec<f32> = (0..frames)
            .map(|i| {
                let t = i as f32 / rate as f32;
                let burst = if (t * 3.0).fract() < 0.6 { 1.0 } else { 0.05 };
                burst
                    * (0.2 * (t * 2.0 * std::f32::consts::PI * 180.0).sin()
                        + 0.1 * (t * 2.0 * std::f32::consts::PI * 2300.0).sin()
                        + 0.15 * noise())
            })
            .collect();
        let right = left.iter().map(|s| s * 0.8).collect();
        vec![left, right]
    }

    fn main_track(dir: &Path) -> Track {
        let rate = 44_100;
        let audio = speechlike(rate);
        let mut writer = SpillWriter::create(&dir.join("main.pcm"), 2).unwrap();
        writer.write(&audio).unwrap();
        let mut voice = VoiceEnergy::new(rate);
        voice.add(&audio);
        voice.finish();
        Track {
            role: Role::Main,
            name: "main".into(),
            spill: writer.finish().unwrap(),
            loudness_lufs: loudness::integrated(&audio, rate).unwrap(),
            voice: Some(voice),
        }
    }

    #[test]
    fn a_first_gain_3_db_off_is_corrected_on_the_encoded_file_within_a_tenth_of_a_lu() {
        for format in [Format::Mp3, Format::Flac] {
            let scratch = Scratch::new(&std::env::temp_dir(), "test-correct").unwrap();
            let tracks = vec![main_track(scratch.path())];
            let plan = plan(format);
            let wrong = Settings {
                gain_db: -3.0,
                limiter_dbfs: -1.5,
            };
            let reasons = Mutex::new(Vec::new());
            let episode =
                encode_delivered(&tracks, &plan, wrong, scratch.path(), &|_| {}, &|why| {
                    reasons.lock().unwrap().push(why.to_owned())
                })
                .unwrap();
            let delivered = episode.delivered;
            assert!(
                (delivered.measured.integrated_lufs - plan.loudness_lufs).abs()
                    <= deliver::TOLERANCE_LU,
                "{format:?}: {delivered:?}"
            );
            assert!(delivered.measured.true_peak_dbtp <= plan.true_peak_ceiling_dbtp);
            assert!(delivered.rounds >= 2, "{format:?}: {delivered:?}");
            assert_eq!(reasons.lock().unwrap().len(), delivered.rounds - 1);
            // The figures are the delivered file's own.
            assert_eq!(
                deliver::measure_file(&episode.path, format).unwrap(),
                delivered.measured
            );
        }
    }

    #[test]
    fn the_mix_pass_predicts_the_codec_so_one_mp3_encode_lands_on_target() {
        let scratch = Scratch::new(&std::env::temp_dir(), "test-pilot").unwrap();
        let tracks = vec![main_track(scratch.path())];
        let plan = plan(Format::Mp3);
        let first = measure_mix(&tracks, &plan, scratch.path(), &|_| {}).unwrap();
        let episode =
            encode_delivered(&tracks, &plan, first, scratch.path(), &|_| {}, &|_| {}).unwrap();
        assert_eq!(episode.delivered.rounds, 1, "{:?}", episode.delivered);
        assert!(
            (episode.delivered.measured.integrated_lufs - plan.loudness_lufs).abs()
                <= deliver::TOLERANCE_LU
        );
        assert_eq!(episode.frames, tracks[0].spill.frames);
    }
}
