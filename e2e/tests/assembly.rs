//! One episode end to end, in every output format: an assembly fleet on the
//! real test control plane, a worker pod run by the process kubelet, three
//! Jobs (MP3, WAV, FLAC) whose inputs (speech from espeak-ng, jingles and a
//! music bed from ffmpeg) are `file://` URLs, and each uploaded file checked
//! with ffmpeg: it decodes, lasts what the pieces add up to, and ffmpeg's
//! own EBU R128 meter finds it within 0.2 LU of the target and within 0.1 LU
//! of the loudness the Job reports, since the Job reports what it delivered.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use drover_crds::{Job, JobPhase, StepPhase};
use drover_e2e::drover::drover_test;
use drover_e2e::wait;
use drover_testkit::{JobBuilder, PipelineWorkerBuilder};
use kube::api::Api;
use serde_json::json;

const STEPS: [&str; 5] = ["fetch", "decode", "mix", "encode", "upload"];
const FORMATS: [&str; 3] = ["mp3", "wav", "flac"];
const TARGET: f64 = -16.0;
/// ffmpeg's summary prints loudness to a tenth, so its own rounding takes
/// up to 0.05 of each bound.
const TO_TARGET_LU: f64 = 0.2;
const TO_REPORTED_LU: f64 = 0.1;

/// Runs a media tool; it must be installed (.ci/run installs it): a missing
/// tool fails the test, it never skips it.
fn tool(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} did not start ({e}); install it: apt-get install -y ffmpeg espeak-ng")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn jingle(path: &Path, seconds: &str) {
    tool(
        "ffmpeg",
        &[
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "aevalsrc=0.3*sin(2*PI*330*t)+0.2*sin(2*PI*495*t)|0.3*sin(2*PI*440*t)+0.2*sin(2*PI*660*t):s=44100",
            "-t",
            seconds,
            path.to_str().unwrap(),
        ],
    );
}

fn seconds(path: &Path) -> f64 {
    tool(
        "ffprobe",
        &[
            "-v",
            "error",
            "-show_entries",
            "format=duration",
            "-of",
            "csv=p=0",
            path.to_str().unwrap(),
        ],
    )
    .trim()
    .parse()
    .expect("ffprobe prints a duration")
}

/// ffmpeg's EBU R128 meter: (integrated LUFS, true peak dBTP).
fn loudness(path: &Path) -> (f64, f64) {
    let log = tool(
        "ffmpeg",
        &[
            "-hide_banner",
            "-nostats",
            "-i",
            path.to_str().unwrap(),
            "-filter_complex",
            "ebur128=peak=true",
            "-f",
            "null",
            "-",
        ],
    );
    let value = |label: &str| -> f64 {
        log.lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(label))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no {label} in ffmpeg's summary:\n{log}"))
    };
    (value("I:"), value("Peak:"))
}

#[tokio::test]
async fn a_worker_pod_assembles_an_episode_in_every_format_at_the_loudness_it_reports() {
    let t = drover_test("assembly").await;
    let (env, ns) = (t.env, t.namespace.clone());
    let media = env.control_plane.state_dir().join("media").join(&ns);
    std::fs::create_dir_all(&media).expect("media dir");
    let (intro, main, outro, bed) = (
        media.join("intro.flac"),
        media.join("main.wav"),
        media.join("outro.wav"),
        media.join("bed.ogg"),
    );
    jingle(&intro, "3");
    jingle(&outro, "4");
    tool(
        "ffmpeg",
        &[
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "sine=frequency=110:sample_rate=44100",
            "-t",
            "6",
            "-c:a",
            "libvorbis",
            bed.to_str().unwrap(),
        ],
    );
    tool(
        "espeak-ng",
        &[
            "-w",
            main.to_str().unwrap(),
            "This is episode forty two. A worker pod fetched these words, resampled them, \
             brought them to minus sixteen LUFS and wrapped them in an intro and an outro.",
        ],
    );
    let url = |p: &Path| format!("file://{}", p.display());

    let fleet = PipelineWorkerBuilder::assembly("episodes")
        .allowed_prefixes(&[&format!("{}/", url(&media))])
        .queue(&format!("{ns}-episodes"), &format!("{ns}-episodes-sub"))
        .ack_deadline_seconds(30)
        .replicas(1, 1)
        // The three episodes at once, one thread each.
        .concurrency(3)
        // Debug builds are slow at DSP; the step bound only guards a hang.
        .timeouts(600, 1800)
        .max_attempts(2)
        .initial_backoff_seconds(1)
        .assembly_output(44100, TARGET, -1.0);
    t.apply_fleet(fleet.build()).await;
    let output = |format: &str| media.join("out").join(format!("episode-42.{format}"));
    for format in FORMATS {
        let input = json!({
            "episodeId": "42",
            "mainUrl": url(&main),
            "template": {
                "introUrl": url(&intro), "outroUrl": url(&outro), "musicBedUrl": url(&bed),
                "crossfadeSeconds": 1.0, "format": format,
            },
            "outputUrl": url(&output(format)),
        });
        t.create_job(
            JobBuilder::new(&format!("episode-42-{format}"), "episodes")
                .input(input)
                .build(),
        )
        .await;
    }
    let jobs: Api<Job> = t.api();
    let expected = seconds(&intro) + seconds(&main) + seconds(&outro) - 2.0;

    for format in FORMATS {
        let name = format!("episode-42-{format}");
        let status = wait::job_finished(&jobs, &name, Duration::from_secs(900)).await;
        assert_eq!(status.phase, JobPhase::Succeeded, "{name}: {status:?}");
        let names: Vec<&str> = status.steps.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, STEPS, "{name}");
        assert!(
            status.steps.iter().all(|s| s.phase == StepPhase::Succeeded),
            "{name}: {:?}",
            status.steps
        );

        let result = status.result.expect("a result");
        let output = output(format);
        assert_eq!(result["outputUrl"], json!(url(&output)), "{name}");
        assert_eq!(result["format"], json!(format), "{name}");
        assert_eq!(result["sampleRate"], json!(44100), "{name}");
        let reported = result["durationSeconds"].as_f64().expect("durationSeconds");
        assert!(
            (reported - expected).abs() < 0.01,
            "{name}: {result}, want {expected} s"
        );
        let reported_lufs = result["integratedLufs"].as_f64().expect("integratedLufs");
        let reported_peak = result["truePeakDbtp"].as_f64().expect("truePeakDbtp");
        assert!(
            (reported_lufs - TARGET).abs() <= TO_TARGET_LU,
            "{name}: {result}"
        );
        assert!(reported_peak <= -1.0, "{name}: {result}");

        // The uploaded file, as ffmpeg hears it. LAME pads under 0.1 s.
        let uploaded = seconds(&output);
        assert!(
            uploaded >= expected - 0.01 && uploaded < expected + 0.1,
            "{name}: the file lasts {uploaded} s, want {expected} s"
        );
        let (lufs, peak) = loudness(&output);
        eprintln!(
            "{name}: ffmpeg measures {lufs} LUFS, {peak} dBTP; the Job reports {reported_lufs} LUFS, {reported_peak} dBTP"
        );
        assert!(
            (lufs - TARGET).abs() <= TO_TARGET_LU,
            "{name}: ffmpeg measures {lufs} LUFS, target {TARGET}"
        );
        assert!(
            (lufs - reported_lufs).abs() <= TO_REPORTED_LU,
            "{name}: ffmpeg measures {lufs} LUFS, the Job reports {reported_lufs}"
        );
        // ffmpeg meters at 48 kHz, so its true peak may read a little off ours.
        assert!(
            peak <= -0.8,
            "{name}: ffmpeg measures a true peak of {peak} dBTP"
        );
    }
}
