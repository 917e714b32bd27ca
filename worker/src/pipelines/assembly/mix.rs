//! Joining an episode: intro, main content and outro laid end to end with
//! equal-power crossfades, and a music bed under the main content that ducks
//! while the voice speaks. The pure whole-clip functions define the mix;
//! [`Render`] makes the same mix a block at a time from spilled inputs.

use std::f32::consts::FRAC_PI_2;

use super::Block;
use super::spill::{Spill, SpillReader};
use crate::pipelines::Failure;

/// Where the bed sits under a voice that is silent, relative to the voice's
/// loudness, and how much further it drops while the voice is speaking.
pub const BED_LEVEL_DB: f32 = -12.0;
pub const DUCK_DB: f32 = -14.0;
/// The voice envelope is read in windows of this many milliseconds; a window
/// louder than the threshold (relative to full scale) counts as speech.
const ENVELOPE_WINDOW_MS: u32 = 20;
const VOICE_THRESHOLD_DB: f32 = -45.0;
/// The bed ducks quickly and comes back slowly, like a radio desk.
const DUCK_ATTACK_MS: f32 = 60.0;
const DUCK_RELEASE_MS: f32 = 600.0;
/// The bed fades in and out over this long at the edges of the main content.
const BED_FADE_SECONDS: f32 = 1.0;

/// Gains of the outgoing and incoming signal at `t` in [0, 1] through a
/// crossfade: cos and sin, so their powers always sum to one.
pub fn equal_power(t: f32) -> (f32, f32) {
    let t = t.clamp(0.0, 1.0) * FRAC_PI_2;
    (t.cos(), t.sin())
}

/// The crossfade actually used between two pieces: no longer than the
/// shorter of them, so a piece is never faded away entirely.
pub fn crossfade_frames(wanted: usize, before: usize, after: usize) -> usize {
    wanted.min(before).min(after)
}

/// Starts of `lengths` laid end to end, each overlapping the one before by
/// its crossfade, and the total length.
pub fn timeline(lengths: &[usize], crossfade: usize) -> (Vec<usize>, Vec<usize>, usize) {
    let mut starts = Vec::with_capacity(lengths.len());
    let mut fades = Vec::with_capacity(lengths.len());
    let mut end = 0usize;
    for (i, &length) in lengths.iter().enumerate() {
        let fade = if i == 0 {
            0
        } else {
            crossfade_frames(crossfade, lengths[i - 1], length)
        };
        let start = end - fade;
        starts.push(start);
        fades.push(fade);
        end = start + length;
    }
    (starts, fades, end)
}

/// Lays `pieces` (each planar, all with `channels` channels) end to end with
/// equal-power crossfades of `crossfade` frames. Returns the mix and where
/// each piece starts in it.
pub fn join(
    pieces: &[&[Vec<f32>]],
    channels: usize,
    crossfade: usize,
) -> (Vec<Vec<f32>>, Vec<usize>) {
    let lengths: Vec<usize> = pieces
        .iter()
        .map(|p| p.first().map_or(0, Vec::len))
        .collect();
    let (starts, fades, total) = timeline(&lengths, crossfade);
    let mut out = vec![vec![0.0f32; total]; channels];
    for (p, piece) in pieces.iter().enumerate() {
        let start = starts[p];
        let fade_in = fades[p];
        let fade_out = fades.get(p + 1).copied().unwrap_or(0);
        let length = lengths[p];
        for (c, dst) in out.iter_mut().enumerate() {
            let src = &piece[c];
            let dst = &mut dst[start..start + length];
            for (i, (d, s)) in dst.iter_mut().zip(src).enumerate() {
                let mut gain = 1.0;
                if i < fade_in {
                    gain *= equal_power((i as f32 + 0.5) / fade_in as f32).1;
                }
                let from_end = length - i;
                if from_end <= fade_out {
                    gain *= equal_power(1.0 - (from_end as f32 - 0.5) / fade_out as f32).0;
                }
                *d += s * gain;
            }
        }
    }
    (out, starts)
}

/// The bed's gain, frame by frame, while `voice` plays: `BED_LEVEL_DB`
/// where the voice is quiet, `DUCK_DB` lower where it speaks, with a fast
/// attack and slow release between them (a sidechain compressor reduced to
/// its essentials).
pub fn duck_envelope(voice: &[Vec<f32>], rate: u32) -> Vec<f32> {
    let frames = voice.first().map_or(0, Vec::len);
    let window = (rate * ENVELOPE_WINDOW_MS / 1000).max(1) as usize;
    let threshold = 10f32.powf(VOICE_THRESHOLD_DB / 10.0); // mean square
    let open = 10f32.powf(BED_LEVEL_DB / 20.0);
    let ducked = 10f32.powf((BED_LEVEL_DB + DUCK_DB) / 20.0);
    let per_frame = |ms: f32| 1.0 - (-1.0 / (ms / 1000.0 * rate as f32)).exp();
    let (attack, release) = (per_frame(DUCK_ATTACK_MS), per_frame(DUCK_RELEASE_MS));
    let mut envelope = Vec::with_capacity(frames);
    let mut gain = open;
    for start in (0..frames).step_by(window) {
        let end = (start + window).min(frames);
        let energy: f32 = voice
            .iter()
            .map(|c| c[start..end].iter().map(|s| s * s).sum::<f32>())
            .sum::<f32>()
            / ((end - start) * voice.len()) as f32;
        let target = if energy > threshold { ducked } else { open };
        let speed = if target < gain { attack } else { release };
        for _ in start..end {
            gain += (target - gain) * speed;
            envelope.push(gain);
        }
    }
    envelope
}

/// Adds `bed` (looped when shorter) under `mix` from `start` for
/// `envelope.len()` frames, scaled by the envelope and faded at both ends.
pub fn add_bed(mix: &mut [Vec<f32>], bed: &[Vec<f32>], start: usize, envelope: &[f32], rate: u32) {
    let bed_len = bed.first().map_or(0, Vec::len);
    if bed_len == 0 {
        return;
    }
    let span = envelope.len();
    let fade = ((BED_FADE_SECONDS * rate as f32) as usize)
        .min(span / 2)
        .max(1);
    for (c, channel) in mix.iter_mut().enumerate() {
        let src = &bed[c];
        for (i, gain) in envelope.iter().enumerate() {
            let edge = i.min(span - 1 - i);
            let shape = if edge < fade {
                edge as f32 / fade as f32
            } else {
                1.0
            };
            channel[start + i] += src[i % bed_len] * gain * shape;
        }
    }
}

/// The mean square of a voice in envelope windows, gathered while it is
/// decoded (before its gain is known: energy scales with the gain squared).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct VoiceEnergy {
    window: usize,
    /// Mean square of every finished window.
    pub windows: Vec<f32>,
    sum: f32,
    filled: usize,
}

impl VoiceEnergy {
    pub fn new(rate: u32) -> Self {
        Self {
            window: envelope_window(rate),
            ..Self::default()
        }
    }

    /// Adds frames of the voice as decoded. More than two channels are
    /// folded to mono first, as [`conform_channels`] will fold them.
    pub fn add(&mut self, block: &Block) {
        let frames = block.first().map_or(0, Vec::len);
        let count = block.len();
        for i in 0..frames {
            let square = if count > 2 {
                let mono = block.iter().map(|c| c[i]).sum::<f32>() / count as f32;
                mono * mono
            } else {
                block.iter().map(|c| c[i] * c[i]).sum::<f32>() / count as f32
            };
            self.sum += square;
            self.filled += 1;
            if self.filled == self.window {
                self.close();
            }
        }
    }

    /// Closes the last, shorter window.
    pub fn finish(&mut self) {
        if self.filled > 0 {
            self.close();
        }
    }

    fn close(&mut self) {
        self.windows.push(self.sum / self.filled as f32);
        self.sum = 0.0;
        self.filled = 0;
    }
}

fn envelope_window(rate: u32) -> usize {
    (rate * ENVELOPE_WINDOW_MS / 1000).max(1) as usize
}

/// [`duck_envelope`] frame by frame, from window energies measured before
/// the voice's gain (`gain`, linear) was applied.
pub struct Ducker {
    windows: Vec<f32>,
    scale: f32,
    window: usize,
    threshold: f32,
    open: f32,
    ducked: f32,
    attack: f32,
    release: f32,
    gain: f32,
    frame: usize,
    target: f32,
    speed: f32,
}

impl Ducker {
    pub fn new(energy: VoiceEnergy, gain: f32, rate: u32) -> Self {
        let per_frame = |ms: f32| 1.0 - (-1.0 / (ms / 1000.0 * rate as f32)).exp();
        let open = 10f32.powf(BED_LEVEL_DB / 20.0);
        Self {
            window: envelope_window(rate),
            windows: energy.windows,
            scale: gain * gain,
            threshold: 10f32.powf(VOICE_THRESHOLD_DB / 10.0),
            open,
            ducked: 10f32.powf((BED_LEVEL_DB + DUCK_DB) / 20.0),
            attack: per_frame(DUCK_ATTACK_MS),
            release: per_frame(DUCK_RELEASE_MS),
            gain: open,
            frame: 0,
            target: open,
            speed: 0.0,
        }
    }

    /// The bed's gain at the next frame of the voice.
    pub fn next_gain(&mut self) -> f32 {
        if self.frame.is_multiple_of(self.window) {
            let energy = self
                .windows
                .get(self.frame / self.window)
                .copied()
                .unwrap_or(0.0);
            self.target = if energy * self.scale > self.threshold {
                self.ducked
            } else {
                self.open
            };
            self.speed = if self.target < self.gain {
                self.attack
            } else {
                self.release
            };
        }
        self.frame += 1;
        self.gain += (self.target - self.gain) * self.speed;
        self.gain
    }
}

/// One piece of the episode as the renderer reads it.
pub struct Input {
    pub spill: Spill,
    /// Linear gain that brought it to the target loudness.
    pub gain: f32,
}

struct Piece {
    reader: SpillReader,
    from_channels: usize,
    gain: f32,
    start: u64,
    length: u64,
    fade_in: u64,
    fade_out: u64,
}

struct Bed {
    reader: SpillReader,
    from_channels: usize,
    gain: f32,
    length: u64,
    at: u64,
    ducker: Ducker,
    /// Where the main content (and so the bed) starts, and for how long.
    start: u64,
    span: u64,
    fade: u64,
}

/// The episode's mix, rendered a block at a time: what [`join`] and
/// [`add_bed`] make from whole clips, read from spills.
pub struct Render {
    pieces: Vec<Piece>,
    bed: Option<Bed>,
    channels: usize,
    total: u64,
    position: u64,
    scratch: Block,
}

impl Render {
    /// `pieces` in play order; `main` is the index of the main content the
    /// bed lies under, with its voice energy.
    pub fn new(
        pieces: Vec<Input>,
        main: usize,
        voice: VoiceEnergy,
        bed: Option<Input>,
        channels: usize,
        crossfade: usize,
        rate: u32,
    ) -> Result<Self, Failure> {
        let lengths: Vec<usize> = pieces.iter().map(|p| p.spill.frames as usize).collect();
        let (starts, fades, total) = timeline(&lengths, crossfade);
        let main_gain = pieces.get(main).map_or(1.0, |p| p.gain);
        let mut readers = Vec::with_capacity(pieces.len());
        for (i, input) in pieces.into_iter().enumerate() {
            readers.push(Piece {
                reader: input.spill.reader()?,
                from_channels: input.spill.channels,
                gain: input.gain,
                start: starts[i] as u64,
                length: lengths[i] as u64,
                fade_in: fades[i] as u64,
                fade_out: fades.get(i + 1).copied().unwrap_or(0) as u64,
            });
        }
        let bed = match (bed, readers.get(main)) {
            (Some(bed), Some(main_piece)) if bed.spill.frames > 0 => {
                let span = main_piece.length;
                let fade = ((BED_FADE_SECONDS * rate as f32) as u64)
                    .min(span / 2)
                    .max(1);
                Some(Bed {
                    reader: bed.spill.reader()?,
                    from_channels: bed.spill.channels,
                    gain: bed.gain,
                    length: bed.spill.frames,
                    at: 0,
                    ducker: Ducker::new(voice, main_gain, rate),
                    start: main_piece.start,
                    span,
                    fade,
                })
            }
            _ => None,
        };
        Ok(Self {
            pieces: readers,
            bed,
            channels,
            total: total as u64,
            position: 0,
            scratch: Vec::new(),
        })
    }

    /// Frames in the whole episode.
    pub fn total_frames(&self) -> u64 {
        self.total
    }

    /// The next block of at most `frames` frames, or `None` at the end.
    pub fn next_block(&mut self, frames: usize) -> Result<Option<Block>, Failure> {
        if self.position >= self.total {
            return Ok(None);
        }
        let from = self.position;
        let to = (from + frames as u64).min(self.total);
        let n = (to - from) as usize;
        let mut out: Block = vec![vec![0.0; n]; self.channels];
        for piece in &mut self.pieces {
            let lo = from.max(piece.start);
            let hi = to.min(piece.start + piece.length);
            if lo >= hi {
                continue;
            }
            piece.reader.read((hi - lo) as usize, &mut self.scratch)?;
            conform_block(&mut self.scratch, piece.from_channels, self.channels);
            for (dst, src) in out.iter_mut().zip(&self.scratch) {
                for (k, s) in src.iter().enumerate() {
                    let i = lo - piece.start + k as u64;
                    let mut gain = 1.0;
                    if i < piece.fade_in {
                        gain *= equal_power((i as f32 + 0.5) / piece.fade_in as f32).1;
                    }
                    let from_end = piece.length - i;
                    if from_end <= piece.fade_out {
                        gain *=
                            equal_power(1.0 - (from_end as f32 - 0.5) / piece.fade_out as f32).0;
                    }
                    dst[(lo - from) as usize + k] += s * piece.gain * gain;
                }
            }
        }
        if let Some(bed) = &mut self.bed {
            let lo = from.max(bed.start);
            let hi = to.min(bed.start + bed.span);
            let mut at = lo;
            while at < hi {
                let take = (hi - at).min(bed.length - bed.at);
                bed.reader.read(take as usize, &mut self.scratch)?;
                conform_block(&mut self.scratch, bed.from_channels, self.channels);
                for k in 0..take as usize {
                    let i = at - bed.start + k as u64;
                    let edge = i.min(bed.span - 1 - i);
                    let shape = if edge < bed.fade {
                        edge as f32 / bed.fade as f32
                    } else {
                        1.0
                    };
                    let gain = bed.ducker.next_gain() * shape;
                    for (dst, src) in out.iter_mut().zip(&self.scratch) {
                        dst[(at - from) as usize + k] += src[k] * bed.gain * gain;
                    }
                }
                at += take;
                bed.at += take;
                if bed.at == bed.length {
                    bed.reader.seek(0)?;
                    bed.at = 0;
                }
            }
        }
        self.position = to;
        Ok(Some(out))
    }
}

/// [`conform_channels`] on a block read from a spill of `from` channels.
fn conform_block(block: &mut Block, from: usize, to: usize) {
    if from == to {
        return;
    }
    let taken = std::mem::take(block);
    *block = conform_channels(taken, to);
    debug_assert_eq!(block.len(), to);
}

/// `audio` with exactly `channels` channels: mono is copied to every
/// channel, more channels are averaged down to mono and copied out.
pub fn conform_channels(audio: Vec<Vec<f32>>, channels: usize) -> Vec<Vec<f32>> {
    if audio.len() == channels {
        return audio;
    }
    let frames = audio.first().map_or(0, Vec::len);
    let mono = if audio.len() == 1 {
        audio.into_iter().next().unwrap_or_default()
    } else {
        let scale = 1.0 / audio.len() as f32;
        (0..frames)
            .map(|i| audio.iter().map(|c| c[i]).sum::<f32>() * scale)
            .collect()
    };
    vec![mono; channels]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_power_keeps_the_power_constant() {
        for step in 0..=10 {
            let (out, into) = equal_power(step as f32 / 10.0);
            assert!((out * out + into * into - 1.0).abs() < 1e-6);
        }
        assert_eq!(equal_power(0.0), (1.0, 0.0));
        let (out, into) = equal_power(1.0);
        assert!(out.abs() < 1e-6 && (into - 1.0).abs() < 1e-6);
    }

    #[test]
    fn durations_add_up_less_the_crossfades() {
        let (starts, fades, total) = timeline(&[300, 1000, 200], 50);
        assert_eq!(starts, vec![0, 250, 1200]);
        assert_eq!(fades, vec![0, 50, 50]);
        assert_eq!(total, 300 + 1000 + 200 - 2 * 50);
    }

    #[test]
    fn a_crossfade_is_never_longer_than_a_piece() {
        let (_, fades, total) = timeline(&[30, 1000, 200], 50);
        assert_eq!(fades, vec![0, 30, 50]);
        assert_eq!(total, 30 + 1000 + 200 - 30 - 50);
    }

    #[test]
    fn joining_constant_pieces_crossfades_between_them() {
        let a = vec![vec![1.0f32; 100]];
        let b = vec![vec![0.5f32; 100]];
        let (mix, starts) = join(&[&a, &b], 1, 20);
        assert_eq!(starts, vec![0, 80]);
        assert_eq!(mix[0].len(), 180);
        assert_eq!(mix[0][0], 1.0);
        assert_eq!(mix[0][179], 0.5);
        // Halfway through the fade both pieces play at cos(pi/4).
        let mid = mix[0][90];
        let expected = (1.0 + 0.5) * std::f32::consts::FRAC_1_SQRT_2;
        assert!((mid - expected).abs() < 0.05, "{mid}");
    }

    #[test]
    fn the_bed_ducks_under_speech_and_returns_in_silence() {
        let rate = 1000;
        let mut voice = vec![vec![0.0f32; 4000]];
        for s in &mut voice[0][1000..2000] {
            *s = 0.3;
        }
        let envelope = duck_envelope(&voice, rate);
        assert_eq!(envelope.len(), 4000);
        let open = 10f32.powf(BED_LEVEL_DB / 20.0);
        let ducked = 10f32.powf((BED_LEVEL_DB + DUCK_DB) / 20.0);
        assert!((envelope[900] - open).abs() < 1e-4);
        assert!((envelope[1900] - ducked).abs() < 1e-3, "{}", envelope[1900]);
        assert!((envelope[3990] - open).abs() < 0.01, "{}", envelope[3990]);
    }

    #[test]
    fn a_short_bed_loops_and_fades_at_the_edges() {
        let mut mix = vec![vec![0.0f32; 3000]];
        let bed = vec![vec![1.0f32; 100]];
        // At 100 frames a second the fades last 100 frames.
        add_bed(&mut mix, &bed, 500, &[0.5; 2000], 100);
        assert_eq!(mix[0][499], 0.0);
        assert_eq!(mix[0][500], 0.0);
        assert_eq!(mix[0][1500], 0.5);
        assert_eq!(mix[0][2500], 0.0);
        assert!(mix[0][550] > 0.0 && mix[0][550] < 0.5);
    }

    /// A signal that is not periodic at any block size the tests use.
    fn wobble(frames: usize, seed: f32, loud: f32) -> Vec<f32> {
        (0..frames)
            .map(|i| {
                let t = i as f32;
                loud * ((t * 0.013 * seed).sin() + 0.5 * (t * 0.0071 + seed).sin())
                    * if (i / 700) % 3 == 0 { 0.001 } else { 1.0 }
            })
            .collect()
    }

    #[test]
    fn the_streaming_mix_equals_the_in_memory_one() {
        let rate = 8000;
        let dir = std::env::temp_dir().join(format!("drover-mix-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        // A stereo intro, a mono voice, a surround outro and a short stereo bed.
        let intro = vec![wobble(3000, 1.0, 0.3), wobble(3000, 1.3, 0.2)];
        let voice = vec![wobble(20_000, 2.0, 0.4)];
        let outro: Vec<Vec<f32>> = (0..3).map(|c| wobble(2500, 3.0 + c as f32, 0.3)).collect();
        let bed = vec![wobble(1700, 4.0, 0.2), wobble(1700, 4.5, 0.2)];
        let gains = [0.7f32, 1.9, 0.5, 1.2];
        let (channels, crossfade) = (2, 400);

        // In memory: gain, conform, join, duck, lay the bed.
        let gained = |audio: &Vec<Vec<f32>>, gain: f32| -> Vec<Vec<f32>> {
            let audio = audio
                .iter()
                .map(|c| c.iter().map(|s| s * gain).collect())
                .collect();
            conform_channels(audio, channels)
        };
        let pieces = [
            gained(&intro, gains[0]),
            gained(&voice, gains[1]),
            gained(&outro, gains[2]),
        ];
        let refs: Vec<&[Vec<f32>]> = pieces.iter().map(Vec::as_slice).collect();
        let (mut expected, starts) = join(&refs, channels, crossfade);
        let envelope = duck_envelope(&pieces[1], rate);
        add_bed(
            &mut expected,
            &gained(&bed, gains[3]),
            starts[1],
            &envelope,
            rate,
        );

        // Streamed: spills, the voice's energy as decoded, then blocks.
        let spill = |name: &str, audio: &Vec<Vec<f32>>| {
            let mut writer =
                super::super::spill::SpillWriter::create(&dir.join(name), audio.len()).unwrap();
            for start in (0..audio[0].len()).step_by(999) {
                let end = (start + 999).min(audio[0].len());
                writer
                    .write(&audio.iter().map(|c| c[start..end].to_vec()).collect())
                    .unwrap();
            }
            writer.finish().unwrap()
        };
        let mut energy = VoiceEnergy::new(rate);
        for start in (0..voice[0].len()).step_by(333) {
            let end = (start + 333).min(voice[0].len());
            energy.add(&voice.iter().map(|c| c[start..end].to_vec()).collect());
        }
        energy.finish();
        let input = |name, audio, gain| Input {
            spill: spill(name, audio),
            gain,
        };
        let mut render = Render::new(
            vec![
                input("intro", &intro, gains[0]),
                input("voice", &voice, gains[1]),
                input("outro", &outro, gains[2]),
            ],
            1,
            energy,
            Some(input("bed", &bed, gains[3])),
            channels,
            crossfade,
            rate,
        )
        .unwrap();
        assert_eq!(render.total_frames(), expected[0].len() as u64);
        let mut streamed: Block = vec![Vec::new(); channels];
        while let Some(block) = render.next_block(1234).unwrap() {
            for (dst, src) in streamed.iter_mut().zip(block) {
                dst.extend(src);
            }
        }
        assert_eq!(streamed[0].len(), expected[0].len());
        let worst = streamed
            .iter()
            .flatten()
            .zip(expected.iter().flatten())
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(worst < 1e-5, "worst difference {worst}");
        // The bed was under the voice, so the comparison covered it.
        let ducked = envelope.iter().fold(1.0f32, |m, g| m.min(*g));
        assert!(ducked < 10f32.powf((BED_LEVEL_DB + DUCK_DB / 2.0) / 20.0));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn mono_is_spread_and_surround_is_folded() {
        assert_eq!(
            conform_channels(vec![vec![1.0, 2.0]], 2),
            vec![vec![1.0, 2.0]; 2]
        );
        let folded = conform_channels(vec![vec![1.0], vec![0.0], vec![2.0]], 2);
        assert_eq!(folded, vec![vec![1.0]; 2]);
    }
}
