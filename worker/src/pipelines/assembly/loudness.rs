//! EBU R128 loudness through the ebur128 crate (whole clips, or a stream a
//! block at a time), gain to a target, and the look-ahead limiter that holds
//! the episode under its true-peak ceiling, also a block at a time.

use std::collections::VecDeque;

use drover_crds::FailureReason;
use ebur128::{EbuR128, Mode};

use super::Block;
use crate::pipelines::Failure;

/// Integrated loudness and true peak of a signal.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    pub integrated_lufs: f64,
    pub true_peak_dbtp: f64,
}

/// The limiter aims this far under the ceiling: it holds sample peaks, and
/// peaks between samples can rise a little above them.
pub const LIMITER_MARGIN_DB: f64 = 0.5;

fn failure(why: impl std::fmt::Display) -> Failure {
    Failure {
        reason: FailureReason::LoudnessMeasurementFailed,
        message: format!("cannot measure loudness: {why}"),
        retryable: false,
    }
}

/// Integrated loudness in LUFS; `-inf` for silence.
pub fn integrated(channels: &[Vec<f32>], rate: u32) -> Result<f64, Failure> {
    let meter = meter(channels, rate, Mode::I)?;
    meter.loudness_global().map_err(failure)
}

/// Integrated loudness and true peak (the highest of the channels).
pub fn measure(channels: &[Vec<f32>], rate: u32) -> Result<Measurement, Failure> {
    let meter = meter(channels, rate, Mode::I | Mode::TRUE_PEAK)?;
    let mut peak = 0.0f64;
    for c in 0..channels.len() {
        peak = peak.max(meter.true_peak(c as u32).map_err(failure)?);
    }
    Ok(Measurement {
        integrated_lufs: meter.loudness_global().map_err(failure)?,
        true_peak_dbtp: linear_to_db(peak),
    })
}

fn meter(channels: &[Vec<f32>], rate: u32, mode: Mode) -> Result<EbuR128, Failure> {
    let mut meter = EbuR128::new(channels.len() as u32, rate, mode).map_err(failure)?;
    let planar: Vec<&[f32]> = channels.iter().map(Vec::as_slice).collect();
    meter.add_frames_planar_f32(&planar).map_err(failure)?;
    Ok(meter)
}

/// A loudness meter fed a block at a time.
pub struct Meter {
    meter: EbuR128,
    channels: usize,
    true_peak: bool,
}

impl Meter {
    /// Integrated loudness only, or with the true peak (4x oversampled,
    /// several times the work).
    pub fn new(channels: usize, rate: u32, true_peak: bool) -> Result<Self, Failure> {
        let mode = if true_peak {
            Mode::I | Mode::TRUE_PEAK
        } else {
            Mode::I
        };
        Ok(Self {
            meter: EbuR128::new(channels as u32, rate, mode).map_err(failure)?,
            channels,
            true_peak,
        })
    }

    pub fn add(&mut self, block: &Block) -> Result<(), Failure> {
        let planar: Vec<&[f32]> = block.iter().map(Vec::as_slice).collect();
        self.meter.add_frames_planar_f32(&planar).map_err(failure)
    }

    /// Integrated LUFS (`-inf` for silence), and the true peak in dBTP when
    /// the meter measures it (`-inf` otherwise).
    pub fn measurement(&self) -> Result<Measurement, Failure> {
        let mut peak = 0.0f64;
        if self.true_peak {
            for c in 0..self.channels {
                peak = peak.max(self.meter.true_peak(c as u32).map_err(failure)?);
            }
        }
        Ok(Measurement {
            integrated_lufs: self.meter.loudness_global().map_err(failure)?,
            true_peak_dbtp: linear_to_db(peak),
        })
    }
}

/// The gain that brings `measured` LUFS to `target`; none for silence,
/// which no gain can bring anywhere.
pub fn gain_to(measured: f64, target: f64) -> f64 {
    if measured.is_finite() {
        target - measured
    } else {
        0.0
    }
}

pub fn db_to_linear(db: f64) -> f64 {
    10f64.powf(db / 20.0)
}

pub fn linear_to_db(linear: f64) -> f64 {
    20.0 * linear.log10()
}

/// A look-ahead peak limiter: no sample leaves louder than `ceiling`
/// (linear). The gain starts falling `attack` frames before a peak and
/// recovers with a `release` time constant, so peaks are held without
/// clicks. Pure: a gain curve computed from the input, then applied. This
/// is the limiter's definition on a whole clip; [`Limiter`] computes the
/// same a block at a time.
pub fn limit(channels: &mut [Vec<f32>], rate: u32, ceiling: f32) {
    let frames = channels.first().map_or(0, Vec::len);
    let needed: Vec<f32> = (0..frames)
        .map(|i| {
            let peak = channels.iter().map(|c| c[i].abs()).fold(0.0f32, f32::max);
            if peak > ceiling { ceiling / peak } else { 1.0 }
        })
        .collect();
    if needed.iter().all(|g| *g >= 1.0) {
        return;
    }
    let attack = (rate as usize / 200).max(1); // 5 ms
    // Every frame's gain is the least any frame within `attack` of it
    // needs; a moving average over `attack` then keeps it under each
    // frame's own need while turning steps into ramps.
    let held = sliding_min(&needed, attack);
    let smooth = moving_average(&held, attack);
    let release = (-1.0 / (0.08 * rate as f32)).exp(); // 80 ms
    let mut gain = 1.0f32;
    for (i, target) in smooth.iter().enumerate() {
        gain = target.min(1.0 - (1.0 - gain) * release);
        for channel in channels.iter_mut() {
            channel[i] *= gain;
        }
    }
}

/// `out[i] = min(x[i - r ..= i + r])`, with a monotonic deque: O(n).
pub fn sliding_min(x: &[f32], r: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(x.len());
    let mut window: std::collections::VecDeque<usize> = std::collections::VecDeque::new();
    let mut next = 0;
    for i in 0..x.len() {
        while next < x.len() && next <= i + r {
            while window.back().is_some_and(|&j| x[j] >= x[next]) {
                window.pop_back();
            }
            window.push_back(next);
            next += 1;
        }
        while window.front().is_some_and(|&j| j + r < i) {
            window.pop_front();
        }
        out.push(window.front().map_or(1.0, |&j| x[j]));
    }
    out
}

/// Centred mean over `width` frames (fewer at the edges).
fn moving_average(x: &[f32], width: usize) -> Vec<f32> {
    let half = width / 2;
    let mut prefix = Vec::with_capacity(x.len() + 1);
    prefix.push(0.0f64);
    for v in x {
        prefix.push(prefix[prefix.len() - 1] + f64::from(*v));
    }
    (0..x.len())
        .map(|i| {
            let lo = i.saturating_sub(half);
            let hi = (i + half + 1).min(x.len());
            ((prefix[hi] - prefix[lo]) / (hi - lo) as f64) as f32
        })
        .collect()
}

/// [`limit`] a block at a time: the same gain curve, computed with a look-
/// ahead of `attack + attack / 2` frames, so the output lags the input by
/// that much and [`Limiter::finish`] returns the rest.
pub struct Limiter {
    ceiling: f32,
    attack: usize,
    half: usize,
    release: f32,
    /// Frames not yet sent on, per channel.
    delay: Vec<VecDeque<f32>>,
    /// The gain each frame needs, from index `needed_base`.
    needed: VecDeque<f32>,
    needed_base: u64,
    /// Indices of `needed` whose values rise: the front is the window's
    /// least; `window_next` is the next index to enter it.
    window: VecDeque<u64>,
    window_next: u64,
    /// Held gains, from index `held_base`, and the sum of those in the
    /// averaging window.
    held: VecDeque<f32>,
    held_base: u64,
    sum: f64,
    sum_lo: u64,
    sum_hi: u64,
    /// Frames in, held gains made, frames out.
    frames_in: u64,
    held_made: u64,
    frames_out: u64,
    gain: f32,
}

impl Limiter {
    pub fn new(channels: usize, rate: u32, ceiling: f32) -> Self {
        let attack = (rate as usize / 200).max(1); // 5 ms
        Self {
            ceiling,
            attack,
            half: attack / 2,
            release: (-1.0 / (0.08 * rate as f32)).exp(), // 80 ms
            delay: vec![VecDeque::new(); channels],
            needed: VecDeque::new(),
            needed_base: 0,
            window: VecDeque::new(),
            window_next: 0,
            held: VecDeque::new(),
            held_base: 0,
            sum: 0.0,
            sum_lo: 0,
            sum_hi: 0,
            frames_in: 0,
            held_made: 0,
            frames_out: 0,
            gain: 1.0,
        }
    }

    /// Takes `block` in and returns the frames whose gain is now known.
    pub fn push(&mut self, block: &Block) -> Block {
        let frames = block.first().map_or(0, Vec::len);
        for i in 0..frames {
            let peak = block.iter().map(|c| c[i].abs()).fold(0.0f32, f32::max);
            let need = if peak > self.ceiling {
                self.ceiling / peak
            } else {
                1.0
            };
            self.needed.push_back(need);
            self.frames_in += 1;
        }
        for (delay, channel) in self.delay.iter_mut().zip(block) {
            delay.extend(channel);
        }
        let (attack, half) = (self.attack as u64, self.half as u64);
        let held_ready = self.frames_in.saturating_sub(attack);
        let out_ready = held_ready.saturating_sub(half);
        self.run(held_ready, out_ready, None)
    }

    /// Sends on every frame still held back.
    pub fn finish(&mut self) -> Block {
        let end = self.frames_in;
        self.run(end, end, Some(end))
    }

    fn needed_at(&self, index: u64) -> f32 {
        self.needed[(index - self.needed_base) as usize]
    }

    fn held_at(&self, index: u64) -> f32 {
        self.held[(index - self.held_base) as usize]
    }

    /// Makes held gains up to `held_ready` and output up to `out_ready`;
    /// `end` is the stream's length once it is known, which clips windows.
    fn run(&mut self, held_ready: u64, out_ready: u64, end: Option<u64>) -> Block {
        let attack = self.attack as u64;
        let half = self.half as u64;
        while self.held_made < held_ready {
            let j = self.held_made;
            // The window of frame j is [j - attack, j + attack].
            let upto = (j + attack + 1).min(self.frames_in);
            while self.window_next < upto {
                let next = self.window_next;
                let need = self.needed_at(next);
                while self
                    .window
                    .back()
                    .is_some_and(|&k| self.needed_at(k) >= need)
                {
                    self.window.pop_back();
                }
                self.window.push_back(next);
                self.window_next += 1;
            }
            while self.window.front().is_some_and(|&k| k + attack < j) {
                self.window.pop_front();
            }
            let held = self.window.front().map_or(1.0, |&k| self.needed_at(k));
            self.held.push_back(held);
            self.held_made += 1;
            // Needs before the next window and the deque's front are never read again.
            let keep_from = (j + 1)
                .saturating_sub(attack)
                .min(self.window.front().copied().unwrap_or(u64::MAX));
            while self.needed_base < keep_from {
                self.needed.pop_front();
                self.needed_base += 1;
            }
        }
        let mut out: Block = vec![Vec::new(); self.delay.len()];
        while self.frames_out < out_ready {
            let i = self.frames_out;
            let lo = i.saturating_sub(half);
            let hi = end.map_or(i + half + 1, |n| (i + half + 1).min(n));
            while self.sum_hi < hi {
                self.sum += f64::from(self.held_at(self.sum_hi));
                self.sum_hi += 1;
            }
            while self.sum_lo < lo {
                self.sum -= f64::from(self.held_at(self.sum_lo));
                self.sum_lo += 1;
            }
            let target = (self.sum / (hi - lo) as f64) as f32;
            self.gain = target.min(1.0 - (1.0 - self.gain) * self.release);
            for (dst, delay) in out.iter_mut().zip(&mut self.delay) {
                let sample = delay.pop_front().unwrap_or(0.0);
                dst.push(sample * self.gain);
            }
            self.frames_out += 1;
            while self.held_base < self.sum_lo {
                self.held.pop_front();
                self.held_base += 1;
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(rate: u32, hz: f64, seconds: f64, amplitude: f64) -> Vec<f32> {
        (0..(rate as f64 * seconds) as usize)
            .map(|i| {
                (amplitude * (2.0 * std::f64::consts::PI * hz * i as f64 / rate as f64).sin())
                    as f32
            })
            .collect()
    }

    #[test]
    fn a_full_scale_1k_sine_measures_minus_3_lufs() {
        // EBU Tech 3341: a 0 dBFS 1 kHz sine in one channel is -3.01 LUFS.
        let lufs = integrated(&[tone(48_000, 1000.0, 5.0, 1.0)], 48_000).unwrap();
        assert!((lufs + 3.01).abs() < 0.05, "{lufs}");
    }

    #[test]
    fn the_gain_to_a_target_is_the_difference_and_silence_gets_none() {
        assert_eq!(gain_to(-20.0, -16.0), 4.0);
        assert_eq!(gain_to(-12.5, -16.0), -3.5);
        assert_eq!(gain_to(f64::NEG_INFINITY, -16.0), 0.0);
    }

    #[test]
    fn the_limiter_holds_every_sample_under_the_ceiling() {
        let mut channels = vec![tone(8000, 50.0, 1.0, 0.3)];
        for i in (1000..7000).step_by(997) {
            channels[0][i] = 1.0;
        }
        limit(&mut channels, 8000, 0.5);
        let peak = channels[0].iter().fold(0.0f32, |m, s| m.max(s.abs()));
        assert!(peak <= 0.5 + 1e-6, "{peak}");
        // Quiet stretches far from a spike are untouched.
        assert!((channels[0][500] - tone(8000, 50.0, 1.0, 0.3)[500]).abs() < 1e-6);
    }

    #[test]
    fn sliding_min_looks_both_ways() {
        assert_eq!(
            sliding_min(&[1.0, 1.0, 1.0, 0.2, 1.0, 1.0, 1.0], 2),
            vec![1.0, 0.2, 0.2, 0.2, 0.2, 0.2, 1.0]
        );
    }

    #[test]
    fn the_streaming_limiter_matches_the_whole_clip_one_block_by_block() {
        let rate = 8000;
        let mut whole = vec![tone(rate, 220.0, 2.0, 0.4), tone(rate, 330.0, 2.0, 0.3)];
        for i in (0..whole[0].len()).step_by(1201) {
            whole[0][i] = 0.95;
            let at = (i + 7) % whole[1].len();
            whole[1][at] = -0.9;
        }
        let input = whole.clone();
        limit(&mut whole, rate, 0.5);
        for block_frames in [1, 17, 1000, 40_000] {
            let mut limiter = Limiter::new(2, rate, 0.5);
            let mut streamed: Block = vec![Vec::new(); 2];
            let frames = input[0].len();
            for start in (0..frames).step_by(block_frames) {
                let end = (start + block_frames).min(frames);
                let block: Block = input.iter().map(|c| c[start..end].to_vec()).collect();
                for (dst, src) in streamed.iter_mut().zip(limiter.push(&block)) {
                    dst.extend(src);
                }
            }
            for (dst, src) in streamed.iter_mut().zip(limiter.finish()) {
                dst.extend(src);
            }
            assert_eq!(streamed[0].len(), frames, "blocks of {block_frames}");
            let worst = streamed
                .iter()
                .flatten()
                .zip(whole.iter().flatten())
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-6, "blocks of {block_frames}: worst {worst}");
        }
    }

    #[test]
    fn a_streamed_meter_agrees_with_the_whole_clip_one() {
        let rate = 48_000;
        let channels = vec![tone(rate, 440.0, 3.0, 0.3), tone(rate, 660.0, 3.0, 0.2)];
        let whole = measure(&channels, rate).unwrap();
        let mut meter = Meter::new(2, rate, true).unwrap();
        for start in (0..channels[0].len()).step_by(4096) {
            let end = (start + 4096).min(channels[0].len());
            meter
                .add(&channels.iter().map(|c| c[start..end].to_vec()).collect())
                .unwrap();
        }
        let streamed = meter.measurement().unwrap();
        assert!((streamed.integrated_lufs - whole.integrated_lufs).abs() < 1e-9);
        assert!((streamed.true_peak_dbtp - whole.true_peak_dbtp).abs() < 1e-9);
    }
}
