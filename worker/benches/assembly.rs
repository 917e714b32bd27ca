//! Assembles one episode (a 15 s intro, 11 minutes of speech, a 20 s outro,
//! 2 s crossfades, -16 LUFS under -1 dBTP, 128 kb/s MP3) twice in the same
//! run: with Drover's assembly core in-process, and with the ffmpeg commands
//! a person would script for the same work (decode, acrossfade concat,
//! two-pass loudnorm, libmp3lame at the same bit rate and quality). Prints
//! both wall-clock times and the ratio.
//!
//! Run: `cargo bench -p drover-worker --bench assembly` (needs ffmpeg and
//! espeak-ng).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use drover_worker::pipelines::assembly::encode::{Format, MP3_KBPS, MP3_QUALITY};
use drover_worker::pipelines::assembly::{self, Plan, Role, Source, decode};

const SPEECH: &str = "Welcome back to the show. This week we look at queue driven worker \
fleets: how a job moves from an API call to a worker, what happens when the worker dies \
half way through, and why every retry has to be safe to run twice. Our guest spent ten \
years keeping such fleets alive, and she has learned that the hardest failures are the \
quiet ones, where nothing crashes and nothing finishes. We will talk about timeouts, \
about dead letter queues, and about the dashboards that tell you something is wrong \
before your users do. Stay with us.";
/// Times the speech is looped: it runs about a minute, so 11 make over ten minutes.
const LOOPS: u32 = 11;
const CROSSFADE: f64 = 2.0;
const TARGET: f64 = -16.0;
const CEILING: f64 = -1.0;

fn run(command: &mut Command) -> String {
    let out = command.output().unwrap_or_else(|e| {
        panic!("{command:?} did not start ({e}); install ffmpeg and espeak-ng")
    });
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn ffmpeg() -> Command {
    let mut command = Command::new("ffmpeg");
    command.args(["-hide_banner", "-nostats", "-y"]);
    command
}

fn make_inputs(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let speech = dir.join("speech.wav");
    run(Command::new("espeak-ng")
        .args(["-s", "150", "-w"])
        .arg(&speech)
        .arg(SPEECH.repeat(2)));
    // The main content as a studio would hand it over: 48 kHz stereo WAV.
    let main = dir.join("main.wav");
    run(ffmpeg()
        .args(["-stream_loop", &(LOOPS - 1).to_string(), "-i"])
        .arg(&speech)
        .args(["-ar", "48000", "-ac", "2"])
        .arg(&main));
    let jingle = |path: &Path, seconds: &str| {
        run(ffmpeg()
            .args(["-f", "lavfi", "-i"])
            .arg("aevalsrc=0.3*sin(2*PI*330*t)+0.2*sin(2*PI*495*t)+0.05*(random(0)-0.5)|0.3*sin(2*PI*440*t)+0.2*sin(2*PI*660*t):s=44100")
            .args(["-t", seconds])
            .arg(path));
    };
    let intro = dir.join("intro.flac");
    let outro = dir.join("outro.flac");
    jingle(&intro, "15");
    jingle(&outro, "20");
    (intro, main, outro)
}

fn drover(intro: &Path, main: &Path, outro: &Path, output: &Path) -> assembly::Episode {
    let plan = Plan {
        sample_rate: 44_100,
        loudness_lufs: TARGET,
        true_peak_ceiling_dbtp: CEILING,
        crossfade_seconds: CROSSFADE,
        format: Format::Mp3,
    };
    let sources = [
        (Role::Intro, intro),
        (Role::Main, main),
        (Role::Outro, outro),
    ]
    .into_iter()
    .map(|(role, path)| Source {
        role,
        name: path.display().to_string(),
        extension: path.extension().map(|e| e.to_string_lossy().into_owned()),
        bytes: std::fs::read(path).unwrap().into(),
    })
    .collect();
    let (bytes, episode) = assembly::assemble(sources, &plan).expect("drover assembles");
    std::fs::write(output, bytes).unwrap();
    episode
}

/// The graph both ffmpeg passes share: resample to 44.1 kHz, then intro,
/// main and outro joined with equal-power (quarter-sine) crossfades.
fn concat_graph() -> String {
    format!(
        "[0:a]aresample=44100[i];[1:a]aresample=44100[m];[2:a]aresample=44100[o];\
         [i][m]acrossfade=d={CROSSFADE}:c1=qsin:c2=qsin[im];\
         [im][o]acrossfade=d={CROSSFADE}:c1=qsin:c2=qsin[mix]"
    )
}

fn ffmpeg_episode(intro: &Path, main: &Path, outro: &Path, output: &Path) {
    let inputs = |command: &mut Command| {
        for path in [intro, main, outro] {
            command.arg("-i").arg(path);
        }
    };
    let mut first = ffmpeg();
    inputs(&mut first);
    let log = run(first.args([
        "-filter_complex",
        &format!(
            "{};[mix]loudnorm=I={TARGET}:TP={CEILING}:LRA=11:print_format=json[out]",
            concat_graph()
        ),
        "-map",
        "[out]",
        "-f",
        "null",
        "-",
    ]));
    let measured = |key: &str| -> String {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("\"{key}\"")))
            .unwrap_or_else(|| panic!("loudnorm printed no {key}:\n{log}"));
        line.split(':')
            .nth(1)
            .unwrap()
            .trim()
            .trim_matches(|c| c == '"' || c == ',')
            .to_owned()
    };
    let second_filter = format!(
        "{};[mix]loudnorm=I={TARGET}:TP={CEILING}:LRA=11:measured_I={}:measured_TP={}:measured_LRA={}:measured_thresh={}:offset={}:linear=true,aresample=44100[out]",
        concat_graph(),
        measured("input_i"),
        measured("input_tp"),
        measured("input_lra"),
        measured("input_thresh"),
        measured("target_offset"),
    );
    let mut second = ffmpeg();
    inputs(&mut second);
    run(second
        .args(["-filter_complex", &second_filter, "-map", "[out]"])
        .args(["-c:a", "libmp3lame", "-b:a", &format!("{MP3_KBPS}k")])
        .args(["-compression_level", &MP3_QUALITY.to_string()])
        .arg(output));
}

/// ffmpeg's ebur128 meter on a file: integrated LUFS and true peak dBTP.
fn loudness(path: &Path) -> (String, String) {
    let log = run(ffmpeg().arg("-i").arg(path).args([
        "-filter_complex",
        "ebur128=peak=true",
        "-f",
        "null",
        "-",
    ]));
    let value = |label: &str| {
        log.lines()
            .rev()
            .find_map(|l| l.trim().strip_prefix(label))
            .map(|v| v.trim().to_owned())
            .unwrap_or_default()
    };
    (value("I:"), value("Peak:"))
}

fn seconds(path: &Path) -> f64 {
    let bytes = std::fs::read(path).unwrap();
    decode::decode("out.mp3", Some("mp3"), bytes.into())
        .unwrap()
        .seconds()
}

fn main() {
    // `cargo test --benches` runs this with --bench absent; only a real
    // `cargo bench` does the ten-minute episode.
    if !std::env::args().any(|a| a == "--bench") {
        println!("assembly benchmark: run with `cargo bench -p drover-worker --bench assembly`");
        return;
    }
    let dir = std::env::temp_dir().join(format!("drover-assembly-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (intro, main, outro) = make_inputs(&dir);
    let main_seconds = seconds_of_wav(&main);
    println!(
        "episode: intro 15 s + main {main_seconds:.1} s (espeak-ng speech, 48 kHz stereo WAV) + outro 20 s, \
         {CROSSFADE} s crossfades, {TARGET} LUFS, {CEILING} dBTP, MP3 {MP3_KBPS} kb/s quality {MP3_QUALITY}"
    );

    let ours = dir.join("drover.mp3");
    let started = Instant::now();
    let episode = drover(&intro, &main, &outro, &ours);
    let drover_time = started.elapsed();

    let theirs = dir.join("ffmpeg.mp3");
    let started = Instant::now();
    ffmpeg_episode(&intro, &main, &outro, &theirs);
    let ffmpeg_time = started.elapsed();

    let (our_i, our_tp) = loudness(&ours);
    let (their_i, their_tp) = loudness(&theirs);
    println!(
        "drover: {:.2} s  ({:.1} s of audio; before encoding {:.2} LUFS, {:.2} dBTP; ffmpeg measures the MP3 at {our_i}, {our_tp})",
        drover_time.as_secs_f64(),
        seconds(&ours),
        episode.measured.integrated_lufs,
        episode.measured.true_peak_dbtp,
    );
    println!(
        "ffmpeg: {:.2} s  ({:.1} s of audio; ffmpeg measures the MP3 at {their_i}, {their_tp})",
        ffmpeg_time.as_secs_f64(),
        seconds(&theirs),
    );
    println!(
        "ratio: drover is {:.2}x faster",
        ffmpeg_time.as_secs_f64() / drover_time.as_secs_f64()
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn seconds_of_wav(path: &Path) -> f64 {
    let reader = hound::WavReader::open(path).unwrap();
    f64::from(reader.duration()) / f64::from(reader.spec().sample_rate)
}
