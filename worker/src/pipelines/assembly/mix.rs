//! Joining an episode, all pure: intro, main content and outro laid end to
//! end with equal-power crossfades, and a music bed under the main content
//! that ducks while the voice speaks.

use std::f32::consts::FRAC_PI_2;

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
