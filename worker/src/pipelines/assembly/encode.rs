//! The finished mix to file bytes: WAV (16-bit PCM, through hound) or MP3
//! (LAME through mp3lame-encoder: constant bit rate, quality 5, the same
//! settings the benchmark gives ffmpeg's libmp3lame).

use std::io::Cursor;
use std::mem::MaybeUninit;

use drover_crds::FailureReason;
use mp3lame_encoder::{Bitrate, Builder, DualPcm, FlushNoGap, MonoPcm, Quality};

use crate::pipelines::Failure;

/// Output formats the pipeline writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Mp3,
    Wav,
}

impl Format {
    pub fn parse(name: Option<&str>) -> Result<Self, Failure> {
        match name.unwrap_or("mp3") {
            "mp3" => Ok(Self::Mp3),
            "wav" => Ok(Self::Wav),
            other => Err(Failure {
                reason: FailureReason::InvalidInput,
                message: format!("template.format {other:?} is not mp3 or wav"),
                retryable: false,
            }),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Mp3 => "mp3",
            Self::Wav => "wav",
        }
    }
}

/// MP3 bit rate: per episode, not per channel; 128 kb/s is the common
/// podcast choice for stereo speech with music.
pub const MP3_KBPS: u32 = 128;
/// LAME's algorithm quality, 0 (slowest) to 9; 5 is LAME's own default
/// speed/quality balance for CBR.
pub const MP3_QUALITY: u8 = 5;
/// Frames handed to LAME at once.
const MP3_CHUNK: usize = 65_536;

fn failed(format: Format, why: impl std::fmt::Display) -> Failure {
    Failure {
        reason: FailureReason::EncodeFailed,
        message: format!("cannot encode {}: {why}", format.as_str()),
        retryable: false,
    }
}

pub fn encode(channels: &[Vec<f32>], rate: u32, format: Format) -> Result<Vec<u8>, Failure> {
    match format {
        Format::Wav => wav(channels, rate),
        Format::Mp3 => mp3(channels, rate),
    }
}

fn wav(channels: &[Vec<f32>], rate: u32) -> Result<Vec<u8>, Failure> {
    let spec = hound::WavSpec {
        channels: channels.len() as u16,
        sample_rate: rate,
        bits_per_sample: 16,
        sample_format: hound::SampleFormat::Int,
    };
    let frames = channels.first().map_or(0, Vec::len);
    let mut out = Cursor::new(Vec::with_capacity(44 + frames * channels.len() * 2));
    let mut writer = hound::WavWriter::new(&mut out, spec).map_err(|e| failed(Format::Wav, e))?;
    {
        let mut samples = writer.get_i16_writer((frames * channels.len()) as u32);
        for i in 0..frames {
            for channel in channels {
                samples.write_sample(to_i16(channel[i]));
            }
        }
        samples.flush().map_err(|e| failed(Format::Wav, e))?;
    }
    writer.finalize().map_err(|e| failed(Format::Wav, e))?;
    Ok(out.into_inner())
}

/// Rounds to 16 bits; mastering already kept samples under full scale, so
/// the clamp is only a guard.
fn to_i16(sample: f32) -> i16 {
    (sample * 32767.0).round().clamp(-32768.0, 32767.0) as i16
}

fn mp3(channels: &[Vec<f32>], rate: u32) -> Result<Vec<u8>, Failure> {
    let fail = |why: String| failed(Format::Mp3, why);
    let mut builder = Builder::new().ok_or_else(|| fail("LAME did not start".into()))?;
    builder
        .set_num_channels(channels.len() as u8)
        .map_err(|e| fail(format!("{e:?}")))?;
    builder
        .set_sample_rate(rate)
        .map_err(|e| fail(format!("{e:?}")))?;
    builder
        .set_brate(Bitrate::Kbps128)
        .map_err(|e| fail(format!("{e:?}")))?;
    builder
        .set_quality(Quality::Good)
        .map_err(|e| fail(format!("{e:?}")))?;
    let mut encoder = builder.build().map_err(|e| fail(format!("{e:?}")))?;
    let frames = channels.first().map_or(0, Vec::len);
    // 128 kb/s is 16 kB a second; a little extra for the last frames.
    let mut out: Vec<u8> = Vec::with_capacity(frames / rate.max(1) as usize * 16_500 + 16_384);
    let mut start = 0;
    while start < frames {
        let end = (start + MP3_CHUNK).min(frames);
        let written = {
            out.reserve(mp3lame_encoder::max_required_buffer_size(end - start));
            let spare = spare(&mut out);
            match channels {
                [mono] => encoder.encode(MonoPcm(&mono[start..end]), spare),
                [left, right] => encoder.encode(
                    DualPcm {
                        left: &left[start..end],
                        right: &right[start..end],
                    },
                    spare,
                ),
                _ => {
                    return Err(fail(format!(
                        "{} channels; MP3 holds 1 or 2",
                        channels.len()
                    )));
                }
            }
            .map_err(|e| fail(format!("{e:?}")))?
        };
        // SAFETY: LAME wrote `written` bytes into the spare capacity.
        unsafe { out.set_len(out.len() + written) };
        start = end;
    }
    out.reserve(7200);
    let written = encoder
        .flush::<FlushNoGap>(spare(&mut out))
        .map_err(|e| fail(format!("{e:?}")))?;
    // SAFETY: as above, for the flushed frames.
    unsafe { out.set_len(out.len() + written) };
    Ok(out)
}

fn spare(out: &mut Vec<u8>) -> &mut [MaybeUninit<u8>] {
    out.spare_capacity_mut()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(frames: usize) -> Vec<f32> {
        (0..frames).map(|i| (i as f32 * 0.06).sin() * 0.5).collect()
    }

    #[test]
    fn wav_round_trips_through_the_decoder() {
        let channels = vec![tone(4410), tone(4410)];
        let bytes = encode(&channels, 44_100, Format::Wav).unwrap();
        let audio = super::super::decode::decode("mem.wav", Some("wav"), bytes.into()).unwrap();
        assert_eq!(
            (audio.rate, audio.frames(), audio.channels.len()),
            (44_100, 4410, 2)
        );
        assert!((audio.channels[1][100] - channels[1][100]).abs() < 1e-4);
    }

    #[test]
    fn mp3_round_trips_through_the_decoder() {
        let channels = vec![tone(44_100)];
        let bytes = encode(&channels, 44_100, Format::Mp3).unwrap();
        // 128 kb/s for a second is 16 kB.
        assert!(
            (14_000..20_000).contains(&bytes.len()),
            "{} bytes",
            bytes.len()
        );
        let audio = super::super::decode::decode("mem.mp3", Some("mp3"), bytes.into()).unwrap();
        assert_eq!((audio.rate, audio.channels.len()), (44_100, 1));
        assert!(audio.frames() >= 44_100, "{}", audio.frames());
    }

    #[test]
    fn samples_round_to_sixteen_bits_without_wrapping() {
        assert_eq!(to_i16(1.5), 32767);
        assert_eq!(to_i16(-1.5), -32768);
        assert_eq!(to_i16(0.0), 0);
    }

    #[test]
    fn flac_and_ogg_are_not_written() {
        assert_eq!(Format::parse(None).unwrap(), Format::Mp3);
        assert_eq!(
            Format::parse(Some("ogg")).unwrap_err().reason,
            FailureReason::InvalidInput
        );
    }
}
