//! `kubectl-drover submit --watch` as a person sees it: in a real terminal
//! (a tmux pane, Debian's tmux), on an assembly Job, the screen is captured
//! again and again; the step bars move through the pipeline's steps in
//! place and the last screen shows every step done and the result. The same
//! command with stdout piped to a file prints plain lines, no escapes.
//!
//! tmux, ffmpeg and the built `kubectl-drover` must be there (.ci/run
//! installs them): a missing one fails the test, it never skips it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use drover_e2e::drover::{DroverTest, PUBSUB_PROJECT, binary, drover_test};
use drover_testkit::PipelineWorkerBuilder;
use serde_json::json;

const STEPS: [&str; 5] = ["fetch", "decode", "mix", "encode", "upload"];
const TIMEOUT: Duration = Duration::from_secs(300);

fn run(program: &str, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| {
            panic!("{program} did not start ({e}); install it: apt-get install -y tmux ffmpeg")
        });
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn tone(path: &Path, seconds: &str, hz: u32) {
    let source = format!("sine=frequency={hz}:sample_rate=44100");
    run(
        "ffmpeg",
        &[
            "-hide_banner",
            "-loglevel",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            &source,
            "-t",
            seconds,
            path.to_str().unwrap(),
        ],
    );
}

/// A tmux server of this test's own (its own socket), gone with the guard.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn start(socket: &str, command: &str) -> Self {
        let tmux = Self {
            socket: socket.to_owned(),
        };
        run(
            "tmux",
            &[
                "-L",
                socket,
                "new-session",
                "-d",
                "-s",
                "watch",
                "-x",
                "200",
                "-y",
                "30",
                command,
            ],
        );
        tmux
    }

    fn screen(&self) -> String {
        run(
            "tmux",
            &["-L", &self.socket, "capture-pane", "-p", "-t", "watch"],
        )
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.socket, "kill-server"])
            .output();
    }
}

struct Episode {
    input: PathBuf,
}

/// An assembly fleet and an episode's input file (tones from ffmpeg as `file://` URLs).
async fn episode(t: &DroverTest) -> Episode {
    let media = t
        .env
        .control_plane
        .state_dir()
        .join("media")
        .join(&t.namespace);
    std::fs::create_dir_all(&media).expect("media dir");
    let (intro, main, outro) = (
        media.join("intro.wav"),
        media.join("main.wav"),
        media.join("outro.wav"),
    );
    tone(&intro, "2", 440);
    // Long enough that mixing and encoding take a few screens.
    tone(&main, "20", 220);
    tone(&outro, "2", 330);
    let url = |p: &Path| format!("file://{}", p.display());
    let fleet = PipelineWorkerBuilder::assembly("episodes")
        .queue(&t.unique("episodes"), &t.unique("episodes-sub"))
        .ack_deadline_seconds(30)
        .replicas(1, 1)
        .concurrency(2)
        .timeouts(600, 1800)
        .assembly_output(44100, -16.0, -1.0)
        .allowed_prefixes(&[&format!("{}/", url(&media))]);
    t.apply_fleet(fleet.build()).await;
    let input = media.join("input.json");
    let body = json!({
        "episodeId": "7",
        "mainUrl": url(&main),
        "template": {"introUrl": url(&intro), "outroUrl": url(&outro), "crossfadeSeconds": 0.5, "format": "mp3"},
        "outputUrl": url(&media.join("out").join("episode-7.mp3")),
    });
    std::fs::write(&input, body.to_string()).expect("input file");
    Episode { input }
}

/// The shell line that runs the CLI as a user would.
fn cli_line(t: &DroverTest, args: &str) -> String {
    let cli = binary("kubectl-drover").unwrap_or_else(|e| panic!("{e}"));
    format!(
        "env KUBECONFIG={} PUBSUB_EMULATOR_HOST={} PUBSUB_PROJECT_ID={PUBSUB_PROJECT} {} -n {} {args}",
        t.env.control_plane.kubeconfig_path().display(),
        t.env.pubsub.host_port(),
        cli.display(),
        t.namespace
    )
}

/// The step lines of a screen or file: (step, percent, phase).
fn steps_shown(text: &str) -> Vec<(String, u32, String)> {
    text.lines()
        .filter_map(|line| {
            let rest = line.trim_start().strip_prefix("step ")?;
            let mut words = rest.split_whitespace();
            let name = words.next()?.to_owned();
            let _bar = words.next()?;
            let percent = words.next()?.strip_suffix('%')?.parse().ok()?;
            let phase = words.next()?.to_owned();
            Some((name, percent, phase))
        })
        .collect()
}

#[tokio::test]
async fn submit_watch_draws_moving_bars_in_a_terminal_and_plain_lines_into_a_file() {
    let t = drover_test("cli-tty").await;
    let episode = episode(&t).await;
    let input = episode.input.display().to_string();

    // In a terminal.
    let line = cli_line(
        &t,
        &format!("submit -w episodes -f {input} --name in-a-pane --watch"),
    );
    let tmux = Tmux::start(
        &format!("drover-cli-{}", std::process::id()),
        &format!("{line}; echo EXIT=$?; sleep 600"),
    );
    let started = Instant::now();
    let mut screens: Vec<String> = Vec::new();
    let last = loop {
        let screen = tmux.screen();
        if screens.last() != Some(&screen) {
            screens.push(screen.clone());
        }
        if screen.contains("EXIT=") {
            break screen;
        }
        assert!(
            started.elapsed() < TIMEOUT,
            "no end after {TIMEOUT:?}; the screen:\n{screen}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    eprintln!("{} distinct screens; the last:\n{last}", screens.len());
    assert!(last.contains("EXIT=0"), "{last}");

    // The bars moved through the steps: the screens show ever more steps done.
    let done_counts: Vec<usize> = screens
        .iter()
        .map(|s| {
            steps_shown(s)
                .iter()
                .filter(|(_, _, phase)| phase == "Succeeded")
                .count()
        })
        .collect();
    let mut distinct = done_counts.clone();
    distinct.dedup();
    assert!(
        distinct.len() >= 3,
        "the bars did not move through the steps: {done_counts:?}"
    );
    assert!(
        done_counts.windows(2).all(|w| w[0] <= w[1]),
        "{done_counts:?}"
    );
    let running: Vec<String> = screens
        .iter()
        .flat_map(|s| steps_shown(s))
        .filter(|(_, _, phase)| phase == "Running")
        .map(|(name, _, _)| name)
        .collect();
    assert!(!running.is_empty(), "no screen showed a step running");

    // Redrawn in place: the last screen has each step once, every one done,
    // then the result.
    let shown = steps_shown(&last);
    let names: Vec<&str> = shown.iter().map(|(n, _, _)| n.as_str()).collect();
    assert_eq!(names, STEPS, "{last}");
    assert!(
        shown
            .iter()
            .all(|(_, p, phase)| *p == 100 && phase == "Succeeded"),
        "{last}"
    );
    assert!(last.contains("[####################]"), "{last}");
    assert!(
        last.contains("Succeeded:") && last.contains("\"outputUrl\""),
        "{last}"
    );
    assert!(last.contains("episode-7.mp3"), "{last}");

    // Piped to a file: plain lines, one per change, no escape codes.
    let file = t
        .env
        .control_plane
        .state_dir()
        .join(format!("{}-watch.txt", t.namespace));
    let line = cli_line(
        &t,
        &format!("submit -w episodes -f {input} --name into-a-file --watch"),
    );
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!("{line} > {}", file.display()))
        .status();
    let status = tokio::time::timeout(TIMEOUT, status)
        .await
        .expect("the piped watch ends")
        .expect("sh runs");
    let text = std::fs::read_to_string(&file).expect("the output file");
    eprintln!("piped:\n{text}");
    assert!(status.success(), "{status:?}\n{text}");
    assert!(
        !text.contains('\x1b') && !text.contains('\r'),
        "escape codes in a file:\n{text}"
    );
    let lines = steps_shown(&text);
    for step in STEPS {
        assert!(
            lines
                .iter()
                .any(|(n, p, phase)| n == step && *p == 100 && phase == "Succeeded"),
            "no line of {step} done:\n{text}"
        );
    }
    assert!(
        lines.len() > STEPS.len(),
        "one line per change, not only the last ones:\n{text}"
    );
    assert!(
        text.starts_with("job.drover.dev/into-a-file created\n"),
        "{text}"
    );
    assert!(text.contains("\nSucceeded:\n"), "{text}");
}
