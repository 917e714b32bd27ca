//! Assembles one episode (a 15 s intro, 12.7 minutes of speech, a 20 s
//! outro, 2 s crossfades, -16 LUFS under -1 dBTP, 128 kb/s MP3) twice in
//! the same run: with Drover's assembly core, and with the ffmpeg commands a
//! person would script for the same work (decode, acrossfade concat,
//! two-pass loudnorm, libmp3lame at the same bit rate and quality). Both run
//! as child processes of this one (Drover's as this binary again, with
//! `--child`), and each child's wall-clock time and peak RSS come from the
//! same place: `wait4`'s resource usage. Then Drover alone assembles a
//! three-hour episode, for its peak RSS. Prints the numbers and whether the
//! goals (peak RSS <= 600 MiB at three hours, >= 3x ffmpeg's speed) are met.
//!
//! Run: `cargo bench -p drover-worker --bench assembly` (needs ffmpeg and
//! espeak-ng).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use drover_worker::pipelines::assembly::encode::{Format, MP3_KBPS, MP3_QUALITY};
use drover_worker::pipelines::assembly::{self, Plan, Role, Scratch, Source};

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
/// The long episode's main content, and the goals this benchmark checks.
const LONG_SECONDS: u32 = 3 * 3600;
const RSS_GOAL_MIB: f64 = 600.0;
const SPEED_GOAL: f64 = 3.0;

/// What a child process cost: wall-clock time and peak resident set size.
#[derive(Debug, Clone, Copy, Default)]
struct Cost {
    seconds: f64,
    peak_mib: f64,
}

impl Cost {
    /// Two processes run one after the other: their times add, and the
    /// peak is the larger one.
    fn then(self, next: Cost) -> Cost {
        Cost {
            seconds: self.seconds + next.seconds,
            peak_mib: self.peak_mib.max(next.peak_mib),
        }
    }
}

/// Runs `command` to the end and reaps it with `wait4`, whose resource
/// usage holds the child's own peak RSS (not this process's). Returns its
/// stdout and stderr and what it cost.
// wait4 reaps the child; std's own wait would find nothing left to reap.
#[allow(clippy::zombie_processes)]
fn measured(command: &mut Command) -> (String, String, Cost) {
    let started = Instant::now();
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("{command:?} did not start ({e}); install ffmpeg and espeak-ng")
        });
    let mut stdout = child.stdout.take().expect("piped stdout");
    let mut stderr = child.stderr.take().expect("piped stderr");
    // stderr on a thread of its own, so neither pipe fills while the other is read.
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        text
    });
    let mut out = String::new();
    let _ = stdout.read_to_string(&mut out);
    let err = errors.join().unwrap_or_default();
    let mut status = 0;
    // SAFETY: a zeroed rusage is a valid value for wait4 to fill in.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our own child, not yet reaped (std never waited on it).
    let pid = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let seconds = started.elapsed().as_secs_f64();
    assert_eq!(pid, child.id() as libc::pid_t, "wait4 failed");
    assert!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "{command:?} failed (status {status}): {err}"
    );
    // Linux reports ru_maxrss in KiB.
    let cost = Cost {
        seconds,
        peak_mib: usage.ru_maxrss as f64 / 1024.0,
    };
    (out, err, cost)
}

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

/// The child side: assembles one episode with Drover's core and prints
/// its delivered figures on one line.
fn child(args: &[String]) {
    let [intro, main, outro, output] = args else {
        panic!("--child wants intro, main, outro and output paths, got {args:?}");
    };
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
    .map(|(role, path)| {
        let path = PathBuf::from(path);
        Source {
            role,
            name: path.display().to_string(),
            extension: path.extension().map(|e| e.to_string_lossy().into_owned()),
            path,
        }
    })
    .collect();
    let output = Path::new(output);
    let scratch = Scratch::new(output.parent().expect("output in a directory"), "bench")
        .expect("scratch directory");
    let episode = assembly::assemble(sources, &plan, scratch.path()).expect("drover assembles");
    std::fs::rename(&episode.path, output).expect("episode moved out of scratch");
    let m = episode.delivered.measured;
    println!(
        "{:.1} s of audio; delivered {:.2} LUFS, {:.2} dBTP after {} encode(s)",
        episode.seconds(),
        m.integrated_lufs,
        m.true_peak_dbtp,
        episode.delivered.rounds,
    );
}

fn drover(intro: &Path, main: &Path, outro: &Path, output: &Path) -> (String, Cost) {
    let me = std::env::current_exe().expect("the bench knows its own path");
    let (out, _, cost) = measured(
        Command::new(me)
            .arg("--child")
            .args([intro, main, outro, output]),
    );
    (out.trim().to_owned(), cost)
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

fn ffmpeg_episode(intro: &Path, main: &Path, outro: &Path, output: &Path) -> Cost {
    let inputs = |command: &mut Command| {
        for path in [intro, main, outro] {
            command.arg("-i").arg(path);
        }
    };
    let mut first = ffmpeg();
    inputs(&mut first);
    let (_, log, first_cost) = measured(first.args([
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
    let reported = |key: &str| -> String {
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
        reported("input_i"),
        reported("input_tp"),
        reported("input_lra"),
        reported("input_thresh"),
        reported("target_offset"),
    );
    let mut second = ffmpeg();
    inputs(&mut second);
    let (_, _, second_cost) = measured(
        second
            .args(["-filter_complex", &second_filter, "-map", "[out]"])
            .args(["-c:a", "libmp3lame", "-b:a", &format!("{MP3_KBPS}k")])
            .args(["-compression_level", &MP3_QUALITY.to_string()])
            .arg(output),
    );
    first_cost.then(second_cost)
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

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let Some(at) = args.iter().position(|a| a == "--child") {
        child(&args[at + 1..]);
        return;
    }
    // `cargo test --benches` runs this with --bench absent; only a real
    // `cargo bench` does the episodes.
    if !args.iter().any(|a| a == "--bench") {
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
    let (figures, drover_cost) = drover(&intro, &main, &outro, &ours);
    let theirs = dir.join("ffmpeg.mp3");
    let ffmpeg_cost = ffmpeg_episode(&intro, &main, &outro, &theirs);

    let (our_i, our_tp) = loudness(&ours);
    let (their_i, their_tp) = loudness(&theirs);
    println!(
        "drover: {:6.2} s, peak RSS {:6.1} MiB  ({figures}; ffmpeg measures the MP3 at {our_i}, {our_tp})",
        drover_cost.seconds, drover_cost.peak_mib,
    );
    println!(
        "ffmpeg: {:6.2} s, peak RSS {:6.1} MiB  (two passes, the larger peak; ffmpeg measures the MP3 at {their_i}, {their_tp})",
        ffmpeg_cost.seconds, ffmpeg_cost.peak_mib,
    );
    let ratio = ffmpeg_cost.seconds / drover_cost.seconds;
    println!("ratio: drover is {ratio:.2}x faster");
    std::fs::remove_file(&ours).unwrap();
    std::fs::remove_file(&theirs).unwrap();

    // The long episode: the same speech looped to three hours.
    let long_main = dir.join("main-3h.wav");
    run(ffmpeg()
        .args(["-stream_loop", "-1", "-i"])
        .arg(&main)
        .args(["-t", &LONG_SECONDS.to_string(), "-c", "copy"])
        .arg(&long_main));
    std::fs::remove_file(&main).unwrap();
    let long_out = dir.join("drover-3h.mp3");
    let (long_figures, long_cost) = drover(&intro, &long_main, &outro, &long_out);
    println!(
        "drover, 3-hour episode: {:6.2} s, peak RSS {:6.1} MiB  ({long_figures})",
        long_cost.seconds, long_cost.peak_mib,
    );
    let verdict = |met: bool| if met { "met" } else { "NOT met" };
    println!(
        "goals: peak RSS of the 3-hour episode <= {RSS_GOAL_MIB} MiB: {} ({:.1} MiB); \
         speed >= {SPEED_GOAL}x ffmpeg: {} ({ratio:.2}x)",
        verdict(long_cost.peak_mib <= RSS_GOAL_MIB),
        long_cost.peak_mib,
        verdict(ratio >= SPEED_GOAL),
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn seconds_of_wav(path: &Path) -> f64 {
    let reader = hound::WavReader::open(path).unwrap();
    f64::from(reader.duration()) / f64::from(reader.spec().sample_rate)
}
