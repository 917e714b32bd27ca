//! EBU R128 loudness through the ebur128 crate, gain to a target, and the
//! true-peak ceiling. Gain is linear, so loudness and true peak after a
//! gain are computed from one measurement instead of measuring again.

use drover_crds::FailureReason;
use ebur128::{EbuR128, Mode};

use crate::pipelines::Failure;

/// What the final mix measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Measurement {
    pub integrated_lufs: f64,
    pub true_peak_dbtp: f64,
}

impl Measurement {
    /// The same audio after `db` of gain.
    pub fn with_gain(self, db: f64) -> Self {
        Self {
            integrated_lufs: self.integrated_lufs + db,
            true_peak_dbtp: self.true_peak_dbtp + db,
        }
    }
}

/// The limiter aims this far under the ceiling: it holds sample peaks, and
/// peaks between samples can rise a little above them.
const LIMITER_MARGIN_DB: f64 = 0.5;
/// The loudness the mix may miss the target by before mastering tries again.
const LOUDNESS_TOLERANCE_LU: f64 = 0.2;
/// Rounds of gain, limit and measure before the mix is taken as it is.
const MASTER_ROUNDS: usize = 3;

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

pub fn apply_gain(channels: &mut [Vec<f32>], db: f64) {
    if db == 0.0 {
        return;
    }
    let gain = db_to_linear(db) as f32;
    for channel in channels {
        for sample in channel {
            *sample *= gain;
        }
    }
}

/// A look-ahead peak limiter: no sample leaves louder than `ceiling`
/// (linear). The gain starts falling `attack` frames before a peak and
/// recovers with a `release` time constant, so peaks are held without
/// clicks. Pure: a gain curve computed from the input, then applied.
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

/// Brings a finished mix to `target` LUFS with its true peak at or under
/// `ceiling` dBTP: gain, limit, measure, and once more if the limiter took
/// the loudness off target. The last step is a plain gain computed from the
/// measurement, so the reported figures are exact and the ceiling holds.
pub fn master(
    channels: &mut [Vec<f32>],
    rate: u32,
    target: f64,
    ceiling: f64,
    estimate: f64,
) -> Result<Measurement, Failure> {
    let original: Vec<Vec<f32>> = channels.to_vec();
    let mut gain = gain_to(estimate, target);
    let limiter_ceiling = db_to_linear(ceiling - LIMITER_MARGIN_DB) as f32;
    let mut result = None;
    for round in 0..MASTER_ROUNDS {
        if round > 0 {
            channels.clone_from_slice(&original);
        }
        apply_gain(channels, gain);
        limit(channels, rate, limiter_ceiling);
        let measured = measure(channels, rate)?;
        let trim = (ceiling - measured.true_peak_dbtp).min(0.0);
        let miss = gain_to(measured.integrated_lufs, target);
        result = Some((measured, trim));
        if miss.abs() <= LOUDNESS_TOLERANCE_LU || trim < 0.0 && miss > 0.0 {
            break;
        }
        gain += miss;
    }
    let (measured, trim) = result.expect("at least one round");
    apply_gain(channels, trim);
    Ok(measured.with_gain(trim))
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
    fn gain_moves_loudness_and_peak_by_the_same_decibels() {
        let m = Measurement {
            integrated_lufs: -20.0,
            true_peak_dbtp: -4.0,
        };
        assert_eq!(
            m.with_gain(gain_to(-20.0, -16.0)),
            Measurement {
                integrated_lufs: -16.0,
                true_peak_dbtp: 0.0
            }
        );
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
    fn mastering_lands_on_target_under_the_ceiling() {
        // A loud, peaky signal: a tone with noise-like spikes.
        let rate = 48_000;
        let mut channels = vec![tone(rate, 220.0, 6.0, 0.2), tone(rate, 330.0, 6.0, 0.2)];
        for i in (0..channels[0].len()).step_by(4801) {
            channels[0][i] = 0.95;
        }
        let estimate = integrated(&channels, rate).unwrap();
        let m = master(&mut channels, rate, -16.0, -1.0, estimate).unwrap();
        assert!((m.integrated_lufs + 16.0).abs() < 0.5, "{m:?}");
        assert!(m.true_peak_dbtp <= -1.0 + 1e-9, "{m:?}");
        let check = measure(&channels, rate).unwrap();
        assert!(
            (check.integrated_lufs - m.integrated_lufs).abs() < 0.01,
            "{check:?} {m:?}"
        );
        assert!(
            (check.true_peak_dbtp - m.true_peak_dbtp).abs() < 0.01,
            "{check:?} {m:?}"
        );
    }
}
