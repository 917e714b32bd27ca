//! Loudness as delivered: the figures a Job reports are measured on the
//! file it uploads, decoded again, because a codec moves them (LAME at
//! 128 kb/s takes 0.4-0.6 LU off speech). A round renders and encodes with
//! a master gain and a limiter ceiling, then measures what was encoded;
//! while the file misses the target by more than [`TOLERANCE_LU`] or peaks
//! over the ceiling, the gain (or the ceiling) is corrected and the episode
//! encoded again. A pilot (short excerpts encoded while the mix is
//! measured) predicts the codec's shift, so the first round usually lands.

use std::fs::File;
use std::io::BufWriter;
use std::path::Path;

use super::Block;
use super::decode::Decoder;
use super::encode::{Encoder, Format};
use super::loudness::{Measurement, Meter, gain_to};
use super::spill::scratch_failure;
use crate::pipelines::Failure;

/// How far the delivered loudness may sit from the target.
pub const TOLERANCE_LU: f64 = 0.1;
/// Rounds of encode and measure before the last file is taken as it is.
pub const MAX_ROUNDS: usize = 4;
/// A true peak over the ceiling lowers the limiter's ceiling by the excess
/// and this much more, so the next round does not land just over again.
const PEAK_MARGIN_DB: f64 = 0.1;

/// What one round renders with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Settings {
    /// Master gain on the mix, in dB.
    pub gain_db: f64,
    /// The limiter's sample-peak ceiling, in dBFS.
    pub limiter_dbfs: f64,
}

/// The settings for another round after one delivered `measured`, or
/// `None` when that file is on target and under the ceiling.
pub fn correct(
    settings: Settings,
    measured: Measurement,
    target: f64,
    ceiling: f64,
) -> Option<Settings> {
    let miss = gain_to(measured.integrated_lufs, target);
    let over = measured.true_peak_dbtp - ceiling;
    if miss.abs() <= TOLERANCE_LU && over <= 0.0 {
        return None;
    }
    Some(Settings {
        gain_db: settings.gain_db + miss,
        limiter_dbfs: if over > 0.0 {
            settings.limiter_dbfs - over - PEAK_MARGIN_DB
        } else {
            settings.limiter_dbfs
        },
    })
}

/// The file a round ended with.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Delivered {
    pub measured: Measurement,
    pub settings: Settings,
    pub rounds: usize,
}

/// Runs `round` (render, encode, measure what was encoded) from `first`
/// until [`correct`] is satisfied or [`MAX_ROUNDS`] have run. `again` hears
/// why each further round runs.
pub fn deliver(
    first: Settings,
    target: f64,
    ceiling: f64,
    mut round: impl FnMut(Settings) -> Result<Measurement, Failure>,
    mut again: impl FnMut(&str),
) -> Result<Delivered, Failure> {
    let mut settings = first;
    let mut rounds = 0;
    loop {
        let measured = round(settings)?;
        rounds += 1;
        match correct(settings, measured, target, ceiling) {
            Some(next) if rounds < MAX_ROUNDS => {
                again(&format!(
                    "encoded again: the file measured {:.2} LUFS, {:.2} dBTP (target {target} LUFS, ceiling {ceiling} dBTP)",
                    measured.integrated_lufs, measured.true_peak_dbtp
                ));
                settings = next;
            }
            _ => {
                return Ok(Delivered {
                    measured,
                    settings,
                    rounds,
                });
            }
        }
    }
}

/// Decodes a finished file and measures it: integrated loudness and true peak.
pub fn measure_file(path: &Path, format: Format) -> Result<Measurement, Failure> {
    let name = format!("the encoded {}", format.as_str());
    let mut decoder = Decoder::open(&name, path, Some(format.as_str()))?;
    let mut meter: Option<Meter> = None;
    while let Some(block) = decoder.next_block()? {
        let meter = match &mut meter {
            Some(meter) => meter,
            None => meter.insert(Meter::new(
                block.len(),
                decoder.rate().unwrap_or(44_100),
                true,
            )?),
        };
        meter.add(&block)?;
    }
    match meter {
        Some(meter) => meter.measurement(),
        None => Err(Failure {
            reason: drover_crds::FailureReason::EncodeFailed,
            message: format!("{name} holds no audio"),
            retryable: false,
        }),
    }
}

/// Excerpts of the mastered mix encoded on the side: one second in every
/// ten, faded in and out, measured before and after the codec.
pub struct Pilot {
    format: Format,
    path: std::path::PathBuf,
    encoder: Option<Encoder<BufWriter<File>>>,
    before: Meter,
    position: u64,
    period: u64,
    length: u64,
    fade: u64,
}

const PILOT_PERIOD_SECONDS: u64 = 10;
const PILOT_SECONDS: u64 = 1;
const PILOT_FADE_MS: u64 = 10;

impl Pilot {
    /// A pilot for a lossy `format`; `None` for lossless ones, whose 16-bit
    /// samples measure as the mix does.
    pub fn new(
        format: Format,
        channels: usize,
        rate: u32,
        path: &Path,
    ) -> Result<Option<Self>, Failure> {
        if format != Format::Mp3 {
            return Ok(None);
        }
        let file = File::create(path).map_err(|e| scratch_failure(path, e))?;
        Ok(Some(Self {
            format,
            path: path.to_owned(),
            encoder: Some(Encoder::new(format, channels, rate, BufWriter::new(file))?),
            before: Meter::new(channels, rate, false)?,
            position: 0,
            period: PILOT_PERIOD_SECONDS * u64::from(rate),
            length: PILOT_SECONDS * u64::from(rate),
            fade: PILOT_FADE_MS * u64::from(rate) / 1000,
        }))
    }

    /// Takes the next block of the mastered mix.
    pub fn add(&mut self, block: &Block) -> Result<(), Failure> {
        let frames = block.first().map_or(0, Vec::len);
        let mut excerpt: Block = vec![Vec::new(); block.len()];
        for i in 0..frames {
            let offset = (self.position + i as u64) % self.period;
            if offset >= self.length {
                continue;
            }
            let edge = offset.min(self.length - 1 - offset);
            let shape = (edge as f32 / self.fade.max(1) as f32).min(1.0);
            for (dst, src) in excerpt.iter_mut().zip(block) {
                dst.push(src[i] * shape);
            }
        }
        self.position += frames as u64;
        if excerpt[0].is_empty() {
            return Ok(());
        }
        self.before.add(&excerpt)?;
        match &mut self.encoder {
            Some(encoder) => encoder.write(&excerpt),
            None => Ok(()),
        }
    }

    /// How many dB the codec moved the excerpts' loudness.
    pub fn shift_db(mut self) -> Result<f64, Failure> {
        if let Some(encoder) = self.encoder.take() {
            encoder.finish()?;
        }
        let before = self.before.measurement()?.integrated_lufs;
        let after = measure_file(&self.path, self.format)?.integrated_lufs;
        let _ = std::fs::remove_file(&self.path);
        Ok(if before.is_finite() && after.is_finite() {
            after - before
        } else {
            0.0
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TARGET: f64 = -16.0;
    const CEILING: f64 = -1.0;

    fn measured(lufs: f64, peak: f64) -> Measurement {
        Measurement {
            integrated_lufs: lufs,
            true_peak_dbtp: peak,
        }
    }

    #[test]
    fn a_file_on_target_under_the_ceiling_needs_no_other_round() {
        let s = Settings {
            gain_db: 1.0,
            limiter_dbfs: -1.5,
        };
        assert_eq!(correct(s, measured(-16.08, -1.2), TARGET, CEILING), None);
    }

    #[test]
    fn a_quiet_file_gets_the_missing_gain_and_a_peaky_one_a_lower_ceiling() {
        let s = Settings {
            gain_db: 0.0,
            limiter_dbfs: -1.5,
        };
        let next = correct(s, measured(-16.4, -1.3), TARGET, CEILING).unwrap();
        assert!((next.gain_db - 0.4).abs() < 1e-9 && next.limiter_dbfs == -1.5);
        let next = correct(s, measured(-16.0, -0.7), TARGET, CEILING).unwrap();
        assert!((next.limiter_dbfs - (-1.5 - 0.3 - PEAK_MARGIN_DB)).abs() < 1e-9);
    }

    /// A synthetic delivery chain: a limiter that takes loudness off above
    /// -17 LUFS and a codec that takes 0.45 LU off and lifts peaks.
    fn chain(settings: Settings) -> Measurement {
        let mixed = -17.3 + settings.gain_db;
        let limited = if mixed > -17.0 {
            -17.0 + (mixed + 17.0) * 0.8
        } else {
            mixed
        };
        let peak = (limited + 15.0).min(settings.limiter_dbfs) + 0.4;
        measured(limited - 0.45, peak)
    }

    #[test]
    fn the_gain_correction_converges_within_a_tenth_of_a_lu() {
        let mut reasons = Vec::new();
        let delivered = deliver(
            Settings {
                gain_db: 0.0,
                limiter_dbfs: CEILING - 0.5,
            },
            TARGET,
            CEILING,
            |s| Ok(chain(s)),
            |why| reasons.push(why.to_owned()),
        )
        .unwrap();
        assert!(
            (delivered.measured.integrated_lufs - TARGET).abs() <= TOLERANCE_LU,
            "{delivered:?}"
        );
        assert!(
            delivered.measured.true_peak_dbtp <= CEILING,
            "{delivered:?}"
        );
        assert!(delivered.rounds > 1 && delivered.rounds <= MAX_ROUNDS);
        assert_eq!(reasons.len(), delivered.rounds - 1);
        assert!(
            reasons[0].starts_with("encoded again: the file measured"),
            "{reasons:?}"
        );
    }

    #[test]
    fn a_target_out_of_reach_stops_after_the_last_round_with_its_figures() {
        let mut rounds = 0;
        let delivered = deliver(
            Settings {
                gain_db: 0.0,
                limiter_dbfs: -1.5,
            },
            TARGET,
            CEILING,
            |_| {
                rounds += 1;
                Ok(measured(-30.0, -20.0))
            },
            |_| {},
        )
        .unwrap();
        assert_eq!((delivered.rounds, rounds), (MAX_ROUNDS, MAX_ROUNDS));
        assert_eq!(delivered.measured, measured(-30.0, -20.0));
    }
}
