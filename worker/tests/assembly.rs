//! The assembly pipeline on audio the test makes with ffmpeg and espeak-ng
//! (Debian packages that .ci/run installs): every input format, durations,
//! loudness against ffmpeg's own EBU R128 meter, the true-peak ceiling, and
//! the failures a person has to fix (a damaged file, a missing object).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use drover_crds::FailureReason;
use drover_crds::{Pipeline, PipelineWorkerSpec, StepPhase};
use drover_worker::pipelines::assembly::{self, decode, loudness};
use drover_worker::pipelines::{Attempt, Context, Failure};
use drover_worker::progress::Progress;
use drover_worker::stats::Stats;
use serde_json::{Value, json};

/// Fails (never skips) when a tool the test needs is missing.
fn need(tool: &str) {
    let found = Command::new(tool).arg("--version").output().is_ok();
    assert!(
        found,
        "{tool} is not installed; the assembly tests make their audio with it \
         (apt-get install -y ffmpeg espeak-ng; .ci/run does this)"
    );
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("drover-assembly-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn run_ok(command: &mut Command) -> String {
    let out = command.output().expect("the command starts");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `seconds` of a lavfi source (`sine=...`, `anoisesrc=...`, ...) as `path`.
fn ffmpeg_source(path: &Path, source: &str, seconds: f64, extra: &[&str]) {
    need("ffmpeg");
    let mut command = Command::new("ffmpeg");
    command
        .args([
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
        ])
        .arg(source)
        .args(["-t", &seconds.to_string()])
        .args(extra)
        .arg(path);
    run_ok(&mut command);
}

/// A jingle: a chord with a little noise, stereo 44.1 kHz.
fn jingle(path: &Path, seconds: f64, extra: &[&str]) {
    ffmpeg_source(
        path,
        "aevalsrc=0.3*sin(2*PI*330*t)+0.2*sin(2*PI*495*t)+0.05*(random(0)-0.5)|0.3*sin(2*PI*440*t)+0.2*sin(2*PI*660*t):s=44100",
        seconds,
        extra,
    );
}

/// Speech from espeak-ng: 22.05 kHz mono WAV, so the pipeline resamples it.
fn speech(path: &Path, text: &str) {
    need("espeak-ng");
    run_ok(
        Command::new("espeak-ng")
            .args(["-s", "170", "-w"])
            .arg(path)
            .arg(text),
    );
}

fn seconds_of(path: &Path) -> f64 {
    let bytes = std::fs::read(path).unwrap();
    let ext = path.extension().and_then(|e| e.to_str());
    decode::decode(&path.display().to_string(), ext, bytes.into())
        .unwrap()
        .seconds()
}

/// ffmpeg's ebur128 filter on `path`: (integrated LUFS, true peak dBTP).
fn ffmpeg_loudness(path: &Path) -> (f64, f64) {
    need("ffmpeg");
    let log = run_ok(
        Command::new("ffmpeg")
            .args(["-hide_banner", "-nostats", "-i"])
            .arg(path)
            .args(["-filter_complex", "ebur128=peak=true", "-f", "null", "-"]),
    );
    let value = |label: &str| -> f64 {
        log.lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {label} in ffmpeg's summary:\n{log}"))
    };
    (value("I:"), value("Peak:"))
}

fn url(path: &Path) -> String {
    format!("file://{}", path.display())
}

fn fleet(sample_rate: i32) -> PipelineWorkerSpec {
    serde_json::from_value(json!({
        "pipeline": "assembly",
        "queue": {"topic": "t", "subscription": "s"},
        "timeouts": {"stepSeconds": 600},
        "assembly": {
            "sampleRate": sample_rate, "truePeakCeilingDbtp": -1.0,
            // Every test's media lives in its own directory under /tmp.
            "storage": {"allowedPrefixes": [format!("file://{}/", std::env::temp_dir().display())]},
        },
    }))
    .unwrap()
}

async fn assemble(fleet: &PipelineWorkerSpec, input: Value) -> (Result<Value, Failure>, Progress) {
    let progress = Progress::new(
        Pipeline::Assembly,
        drover_worker::pipelines::steps(fleet),
        Duration::from_secs(600),
        Arc::new(Stats::default()),
    );
    let ctx = Context {
        attempt: Attempt {
            namespace: "ns".into(),
            name: "episode".into(),
            uid: "uid-episode".into(),
            attempt: 1,
        },
        fleet,
        progress: progress.clone(),
        external: Default::default(),
    };
    let done = drover_worker::pipelines::run(&input, &ctx).await;
    let result = done.map(|done| match done {
        drover_worker::pipelines::Done::Finished(result) => result,
        drover_worker::pipelines::Done::Wait(wait) => panic!("assembly never waits: {wait:?}"),
    });
    (result, progress)
}

#[test]
fn every_input_format_decodes() {
    let dir = scratch("formats");
    for (file, extra) in [
        ("tone.wav", vec![]),
        ("tone.flac", vec![]),
        ("tone.mp3", vec!["-b:a", "128k"]),
        ("tone.ogg", vec!["-c:a", "libvorbis"]),
    ] {
        let path = dir.join(file);
        jingle(&path, 2.0, &extra);
        let bytes = std::fs::read(&path).unwrap();
        let audio = decode::decode(
            file,
            path.extension().and_then(|e| e.to_str()),
            bytes.into(),
        )
        .unwrap_or_else(|f| panic!("{file}: {f:?}"));
        assert_eq!((audio.rate, audio.channels.len()), (44_100, 2), "{file}");
        // MP3 and Vorbis carry encoder padding; a frame's worth at most.
        assert!(
            (audio.seconds() - 2.0).abs() < 0.06,
            "{file}: {} s",
            audio.seconds()
        );
        let peak = audio.channels[0].iter().fold(0.0f32, |m, s| m.max(s.abs()));
        assert!((0.4..0.6).contains(&peak), "{file}: peak {peak}");
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_episode_adds_up_and_lands_on_target_as_ffmpeg_measures_it() {
    let dir = scratch("episode");
    let (intro, main, outro, bed) = (
        dir.join("intro.flac"),
        dir.join("main.wav"),
        dir.join("outro.ogg"),
        dir.join("bed.mp3"),
    );
    jingle(&intro, 4.0, &[]);
    speech(
        &main,
        "Welcome back to the show. Today we talk about queues, workers, and why a job \
         that nobody watches is a job that will be lost. Our guest has run fleets of \
         workers for ten years, and she has stories.",
    );
    jingle(&outro, 3.0, &["-c:a", "libvorbis"]);
    ffmpeg_source(
        &bed,
        "sine=frequency=220:sample_rate=48000",
        5.0,
        &["-b:a", "96k"],
    );
    let output = dir.join("out").join("episode.wav");
    let input = json!({
        "episodeId": "7",
        "mainUrl": url(&main),
        "template": {
            "introUrl": url(&intro), "outroUrl": url(&outro), "musicBedUrl": url(&bed),
            "crossfadeSeconds": 1.5, "loudnessLufs": -16.0, "format": "wav",
        },
        "outputUrl": url(&output),
    });
    let fleet = fleet(44_100);
    let (result, progress) = assemble(&fleet, input).await;
    let result = result.unwrap();

    let steps = progress.snapshot();
    let names: Vec<&str> = steps.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, assembly::STEPS);
    assert!(
        steps.iter().all(|s| s.phase == StepPhase::Succeeded),
        "{steps:?}"
    );

    // The crossfades overlap the pieces: the episode is their sum less two.
    let expected = seconds_of(&intro) + seconds_of(&main) + seconds_of(&outro) - 2.0 * 1.5;
    let bytes = std::fs::read(&output).unwrap();
    let out = decode::decode("episode.wav", Some("wav"), bytes.into()).unwrap();
    assert!(
        (out.seconds() - expected).abs() < 0.001,
        "{} s, want {expected} s",
        out.seconds()
    );
    assert!(
        (result["durationSeconds"].as_f64().unwrap() - expected).abs() < 0.002,
        "{result}"
    );
    assert_eq!((out.rate, out.channels.len()), (44_100, 2));
    assert_eq!(result["outputUrl"], json!(url(&output)));
    assert_eq!(result["format"], json!("wav"));

    let ours = result["integratedLufs"].as_f64().unwrap();
    let peak = result["truePeakDbtp"].as_f64().unwrap();
    let (theirs, their_peak) = ffmpeg_loudness(&output);
    assert!(
        (ours + 16.0).abs() <= 0.5,
        "measured {ours} LUFS, target -16"
    );
    assert!(
        (theirs + 16.0).abs() <= 0.5,
        "ffmpeg measured {theirs} LUFS, target -16"
    );
    assert!(
        (ours - theirs).abs() <= 0.5,
        "ours {ours} LUFS, ffmpeg {theirs} LUFS"
    );
    assert!(
        peak <= -1.0,
        "true peak {peak} dBTP over the -1 dBTP ceiling"
    );
    // 16-bit rounding may lift an inter-sample peak by a hair.
    assert!(their_peak <= -0.9, "ffmpeg's true peak {their_peak} dBTP");
    let loudest = out
        .channels
        .iter()
        .flatten()
        .fold(0.0f32, |m, s| m.max(s.abs()));
    assert!(loudest < 0.95, "a sample reached {loudest} of full scale");
    eprintln!(
        "episode: {expected:.3} s, ours {ours} LUFS / {peak} dBTP, ffmpeg {theirs} LUFS / {their_peak} dBTP"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_mp3_episode_meets_a_quieter_target() {
    let dir = scratch("mp3");
    let main = dir.join("main.wav");
    speech(
        &main,
        "This episode has no intro and no outro, only a short message, read slowly.",
    );
    let output = dir.join("episode.mp3");
    let input = json!({
        "episodeId": "8",
        "mainUrl": url(&main),
        "template": {"loudnessLufs": -19.0, "format": "mp3"},
        "outputUrl": url(&output),
    });
    let (result, _) = assemble(&fleet(48_000), input).await;
    let result = result.unwrap();
    assert_eq!(
        (result["sampleRate"].clone(), result["channels"].clone()),
        (json!(48_000), json!(1))
    );
    // What the Job reports is what was delivered: ffmpeg's meter on the MP3
    // agrees to within its own rounding and the meters' differences.
    let (theirs, _) = ffmpeg_loudness(&output);
    let reported = result["integratedLufs"].as_f64().unwrap();
    assert!(
        (theirs + 19.0).abs() <= 0.2,
        "ffmpeg measured {theirs} LUFS, target -19"
    );
    assert!(
        (theirs - reported).abs() <= 0.1,
        "ffmpeg measured {theirs} LUFS, the Job reports {reported}"
    );
    let seconds = seconds_of(&output);
    let main_seconds = seconds_of(&main);
    // LAME adds under two frames of padding.
    assert!(
        seconds >= main_seconds - 0.001 && seconds - main_seconds < 0.08,
        "{seconds} s vs {main_seconds} s"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn damaged_inputs_fail_for_good_and_name_the_file() {
    let dir = scratch("damaged");
    let flac = dir.join("good.flac");
    jingle(&flac, 3.0, &[]);
    let bytes = std::fs::read(&flac).unwrap();
    let cut = dir.join("cut.flac");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    let garbled = dir.join("garbled.wav");
    std::fs::write(
        &garbled,
        "RIFF but then nothing a decoder could want ".repeat(40),
    )
    .unwrap();
    for bad in [&cut, &garbled] {
        let input = json!({
            "episodeId": "9",
            "mainUrl": url(&flac),
            "template": {"introUrl": url(bad), "format": "wav"},
            "outputUrl": url(&dir.join("never.wav")),
        });
        let (result, progress) = assemble(&fleet(44_100), input).await;
        let failure = result.unwrap_err();
        assert_eq!(
            (failure.reason, failure.retryable),
            (FailureReason::UndecodableAudio, false),
            "{failure:?}"
        );
        assert!(failure.message.contains(&url(bad)), "{}", failure.message);
        let decode = progress
            .snapshot()
            .into_iter()
            .find(|s| s.name == "decode")
            .unwrap();
        assert_eq!(decode.phase, StepPhase::Failed);
    }
    assert!(!dir.join("never.wav").exists());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_missing_object_fails_for_good_and_says_which() {
    let dir = scratch("missing");
    let missing = url(&dir.join("no-such-episode.wav"));
    let input = json!({
        "episodeId": "10",
        "mainUrl": missing,
        "template": {},
        "outputUrl": url(&dir.join("out.mp3")),
    });
    let (result, progress) = assemble(&fleet(44_100), input).await;
    let failure = result.unwrap_err();
    assert_eq!(
        (failure.reason, failure.retryable),
        (FailureReason::ObjectNotFound, false)
    );
    assert_eq!(failure.message, format!("{missing} does not exist"));
    let fetch = progress
        .snapshot()
        .into_iter()
        .find(|s| s.name == "fetch")
        .unwrap();
    assert_eq!(fetch.phase, StepPhase::Failed);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn our_meter_agrees_with_ffmpeg_on_noise() {
    let dir = scratch("meter");
    let noise = dir.join("pink.wav");
    ffmpeg_source(
        &noise,
        "anoisesrc=color=pink:amplitude=0.3:sample_rate=48000",
        10.0,
        &[],
    );
    let bytes = std::fs::read(&noise).unwrap();
    let audio = decode::decode("pink.wav", Some("wav"), bytes.into()).unwrap();
    let ours = loudness::measure(&audio.channels, audio.rate).unwrap();
    let (theirs, their_peak) = ffmpeg_loudness(&noise);
    assert!(
        (ours.integrated_lufs - theirs).abs() <= 0.1,
        "{ours:?} vs {theirs}"
    );
    assert!(
        (ours.true_peak_dbtp - their_peak).abs() <= 0.3,
        "{ours:?} vs {their_peak}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
