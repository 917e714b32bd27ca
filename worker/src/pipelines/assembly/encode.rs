//! The finished mix to file bytes, a block at a time: WAV (16-bit PCM,
//! through hound), MP3 (LAME through mp3lame-encoder: constant bit rate,
//! quality 5, the same settings the benchmark gives ffmpeg's libmp3lame) or
//! FLAC (16-bit, through the pure-Rust flacenc).

use std::io::{Cursor, Seek, SeekFrom, Write};

use drover_crds::FailureReason;
pub use drover_crds::input::OutputFormat as Format;
use flacenc::bitsink::ByteSink;
use flacenc::component::{BitRepr, StreamInfo};
use flacenc::error::Verify;
use flacenc::source::{Context, Fill, FrameBuf};
use mp3lame_encoder::{Bitrate, Builder, DualPcm, FlushNoGap, MonoPcm, Quality};

use super::Block;
use crate::pipelines::Failure;

/// The format `template.format` names; MP3 when it names none.
pub fn format(name: Option<&str>) -> Result<Format, Failure> {
    let name = name.unwrap_or("mp3");
    Format::from_name(name).ok_or_else(|| Failure {
        reason: FailureReason::InvalidInput,
        message: format!("template.format {name:?} is not {}", Format::choices()),
        retryable: false,
    })
}

/// MP3 bit rate: per episode, not per channel; 128 kb/s is the common
/// podcast choice for stereo speech with music.
pub const MP3_KBPS: u32 = 128;
/// LAME's algorithm quality, 0 (slowest) to 9; 5 is LAME's own default
/// speed/quality balance for CBR.
pub const MP3_QUALITY: u8 = 5;
/// Samples per FLAC frame: the reference encoder's default.
const FLAC_BLOCK: usize = 4096;
const BITS: usize = 16;

fn failed(format: Format, why: impl std::fmt::Display) -> Failure {
    Failure {
        reason: FailureReason::EncodeFailed,
        message: format!("cannot encode {}: {why}", format.as_str()),
        retryable: false,
    }
}

/// An encoder writing one file into `W`.
pub enum Encoder<W: Write + Seek> {
    Wav(hound::WavWriter<W>),
    Mp3 {
        lame: mp3lame_encoder::Encoder,
        out: W,
        bytes: Vec<u8>,
    },
    Flac(Box<FlacWriter<W>>),
}

impl<W: Write + Seek> Encoder<W> {
    pub fn new(format: Format, channels: usize, rate: u32, out: W) -> Result<Self, Failure> {
        match format {
            Format::Wav => {
                let spec = hound::WavSpec {
                    channels: channels as u16,
                    sample_rate: rate,
                    bits_per_sample: BITS as u16,
                    sample_format: hound::SampleFormat::Int,
                };
                let writer = hound::WavWriter::new(out, spec).map_err(|e| failed(format, e))?;
                Ok(Self::Wav(writer))
            }
            Format::Mp3 => Ok(Self::Mp3 {
                lame: lame(channels, rate)?,
                out,
                bytes: Vec::new(),
            }),
            Format::Flac => Ok(Self::Flac(Box::new(FlacWriter::new(channels, rate, out)?))),
        }
    }

    pub fn write(&mut self, block: &Block) -> Result<(), Failure> {
        let frames = block.first().map_or(0, Vec::len);
        match self {
            Self::Wav(writer) => {
                let mut samples = writer.get_i16_writer((frames * block.len()) as u32);
                for i in 0..frames {
                    for channel in block {
                        samples.write_sample(to_i16(channel[i]));
                    }
                }
                samples.flush().map_err(|e| failed(Format::Wav, e))
            }
            Self::Mp3 { lame, out, bytes } => {
                let fail = |why: String| failed(Format::Mp3, why);
                bytes.clear();
                bytes.reserve(mp3lame_encoder::max_required_buffer_size(frames));
                match block.as_slice() {
                    [mono] => lame.encode_to_vec(MonoPcm(mono), bytes),
                    [left, right] => lame.encode_to_vec(DualPcm { left, right }, bytes),
                    _ => return Err(fail(format!("{} channels; MP3 holds 1 or 2", block.len()))),
                }
                .map_err(|e| fail(format!("{e:?}")))?;
                out.write_all(bytes).map_err(|e| fail(e.to_string()))
            }
            Self::Flac(writer) => writer.write(block),
        }
    }

    /// Ends the file: headers that needed the length are written now.
    pub fn finish(self) -> Result<(), Failure> {
        match self {
            Self::Wav(writer) => writer.finalize().map_err(|e| failed(Format::Wav, e)),
            Self::Mp3 {
                mut lame,
                mut out,
                mut bytes,
            } => {
                bytes.clear();
                bytes.reserve(7200);
                lame.flush_to_vec::<FlushNoGap>(&mut bytes)
                    .map_err(|e| failed(Format::Mp3, format!("{e:?}")))?;
                out.write_all(&bytes)
                    .and_then(|()| out.flush())
                    .map_err(|e| failed(Format::Mp3, e))
            }
            Self::Flac(writer) => writer.finish(),
        }
    }
}

fn lame(channels: usize, rate: u32) -> Result<mp3lame_encoder::Encoder, Failure> {
    let fail = |why: String| failed(Format::Mp3, why);
    let mut builder = Builder::new().ok_or_else(|| fail("LAME did not start".into()))?;
    builder
        .set_num_channels(channels as u8)
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
    builder.build().map_err(|e| fail(format!("{e:?}")))
}

/// Rounds to 16 bits; the limiter already kept samples under full scale,
/// so the clamp is only a guard.
fn to_i16(sample: f32) -> i16 {
    (sample * 32767.0).round().clamp(-32768.0, 32767.0) as i16
}

/// A FLAC stream written frame by frame: a STREAMINFO placeholder first,
/// rewritten at the end with the length, frame sizes and MD5 only known then.
pub struct FlacWriter<W: Write + Seek> {
    out: W,
    config: flacenc::error::Verified<flacenc::config::Encoder>,
    info: StreamInfo,
    frame: FrameBuf,
    context: Context,
    channels: usize,
    /// Interleaved little-endian samples waiting for a whole frame.
    pending: Vec<u8>,
    sink: ByteSink,
}

/// Writes `component`'s bits into `sink` (cleared first).
fn bits(component: &impl BitRepr, sink: &mut ByteSink) -> Result<(), Failure> {
    sink.clear();
    component.write(sink).map_err(|e| failed(Format::Flac, e))
}

/// "fLaC", then the STREAMINFO block's header: last block, type 0, 34 bytes.
const FLAC_HEADER: [u8; 8] = [b'f', b'L', b'a', b'C', 0x80, 0, 0, 34];

impl<W: Write + Seek> FlacWriter<W> {
    fn new(channels: usize, rate: u32, mut out: W) -> Result<Self, Failure> {
        let fail = |why: String| failed(Format::Flac, why);
        // Built without flacenc's threads: a worker's cores are the fleet's to share.
        let config = flacenc::config::Encoder::default()
            .into_verified()
            .map_err(|(_, e)| fail(e.to_string()))?;
        let info =
            StreamInfo::new(rate as usize, channels, BITS).map_err(|e| fail(e.to_string()))?;
        let mut sink = ByteSink::new();
        bits(&info, &mut sink)?;
        out.write_all(&FLAC_HEADER)
            .and_then(|()| out.write_all(sink.as_slice()))
            .map_err(|e| fail(e.to_string()))?;
        Ok(Self {
            sink,
            out,
            config,
            info,
            frame: FrameBuf::with_size(channels, FLAC_BLOCK).map_err(|e| fail(e.to_string()))?,
            context: Context::new(BITS, channels),
            channels,
            pending: Vec::with_capacity(FLAC_BLOCK * channels * 2),
        })
    }

    fn write(&mut self, block: &Block) -> Result<(), Failure> {
        let frames = block.first().map_or(0, Vec::len);
        let frame_bytes = FLAC_BLOCK * self.channels * 2;
        for i in 0..frames {
            for channel in block {
                self.pending
                    .extend_from_slice(&to_i16(channel[i]).to_le_bytes());
            }
            if self.pending.len() == frame_bytes {
                self.frame()?;
            }
        }
        Ok(())
    }

    /// Encodes what is pending as one frame.
    fn frame(&mut self) -> Result<(), Failure> {
        let fail = |why: String| failed(Format::Flac, why);
        let mut sinks = (&mut self.frame, &mut self.context);
        sinks
            .fill_le_bytes(&self.pending, 2)
            .map_err(|e| fail(e.to_string()))?;
        self.pending.clear();
        let number = self.context.current_frame_number().unwrap_or(0);
        let frame = flacenc::encode_fixed_size_frame(&self.config, &self.frame, number, &self.info)
            .map_err(|e| fail(e.to_string()))?;
        self.info.update_frame_info(&frame);
        bits(&frame, &mut self.sink)?;
        self.out
            .write_all(self.sink.as_slice())
            .map_err(|e| fail(e.to_string()))
    }

    fn finish(mut self) -> Result<(), Failure> {
        let fail = |why: String| failed(Format::Flac, why);
        if !self.pending.is_empty() {
            let frames = self.pending.len() / (self.channels * 2);
            self.frame.resize(frames);
            self.frame()?;
        }
        self.info.set_md5_digest(&self.context.md5_digest());
        // Every frame but the last is a whole block, as the reference encoder writes.
        self.info
            .set_block_sizes(FLAC_BLOCK, FLAC_BLOCK)
            .map_err(|e| fail(e.to_string()))?;
        bits(&self.info, &mut self.sink)?;
        self.out
            .seek(SeekFrom::Start(FLAC_HEADER.len() as u64))
            .and_then(|_| self.out.write_all(self.sink.as_slice()))
            .and_then(|()| self.out.seek(SeekFrom::End(0)).map(|_| ()))
            .and_then(|()| self.out.flush())
            .map_err(|e| fail(e.to_string()))
    }
}

/// Encodes a whole clip held in memory: for tests and short clips.
pub fn encode(channels: &[Vec<f32>], rate: u32, format: Format) -> Result<Vec<u8>, Failure> {
    let mut out = Cursor::new(Vec::new());
    {
        let mut encoder = Encoder::new(format, channels.len(), rate, &mut out)?;
        encoder.write(&channels.to_vec())?;
        encoder.finish()?;
    }
    Ok(out.into_inner())
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
    fn flac_round_trips_through_the_decoder_sample_for_sample() {
        // Not a whole number of FLAC frames, in blocks that do not line up with them.
        let frames = 3 * FLAC_BLOCK + 1234;
        let channels = vec![
            tone(frames),
            tone(frames).iter().map(|s| -s * 0.5).collect(),
        ];
        let mut out = Cursor::new(Vec::new());
        let mut encoder = Encoder::new(Format::Flac, 2, 48_000, &mut out).unwrap();
        for start in (0..frames).step_by(1000) {
            let end = (start + 1000).min(frames);
            encoder
                .write(&channels.iter().map(|c| c[start..end].to_vec()).collect())
                .unwrap();
        }
        encoder.finish().unwrap();
        let bytes = out.into_inner();
        // Lossless coding of a tone takes well under half of 16-bit PCM.
        assert!(bytes.len() < frames * 2 * 2 / 2, "{} bytes", bytes.len());
        let audio = super::super::decode::decode("mem.flac", Some("flac"), bytes.into()).unwrap();
        assert_eq!(
            (audio.rate, audio.frames(), audio.channels.len()),
            (48_000, frames, 2)
        );
        for (decoded, original) in audio.channels.iter().zip(&channels) {
            for (d, o) in decoded.iter().zip(original) {
                assert_eq!(
                    (d * 32768.0).round() as i32,
                    i32::from(to_i16(*o)),
                    "a sample changed"
                );
            }
        }
    }

    #[test]
    fn samples_round_to_sixteen_bits_without_wrapping() {
        assert_eq!(to_i16(1.5), 32767);
        assert_eq!(to_i16(-1.5), -32768);
        assert_eq!(to_i16(0.0), 0);
    }

    #[test]
    fn mp3_is_the_default_and_ogg_is_not_written() {
        assert_eq!(format(None).unwrap(), Format::Mp3);
        assert_eq!(format(Some("flac")).unwrap(), Format::Flac);
        let failure = format(Some("ogg")).unwrap_err();
        assert_eq!(failure.reason, FailureReason::InvalidInput);
        assert_eq!(
            failure.message,
            "template.format \"ogg\" is not mp3, wav or flac"
        );
    }
}
