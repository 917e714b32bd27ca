//! Compressed or PCM bytes to planar f32 through symphonia: WAV, MP3, FLAC
//! and Ogg Vorbis, one packet at a time, so a three-hour file never sits in
//! memory. A file that is not audio, is damaged or ends early is the input's
//! fault, so the failure is permanent and names the file.

use std::io::Cursor;
use std::path::Path;

use bytes::Bytes;
use drover_crds::FailureReason;
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{CODEC_TYPE_MP3, CODEC_TYPE_VORBIS, DecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use super::{Audio, Block};
use crate::pipelines::Failure;

/// Frames a file may fall short of its header's count before it counts as
/// truncated: two MP3 frames, for decoders that drop padding.
const SHORT_FRAMES_ALLOWED: u64 = 2 * 1152;
/// Lossy streams' frame counts (an MP3's Xing header, say) are written by
/// encoders that count a few frames differently; allow them 1% more.
const LOSSY_SHORT_FRACTION: u64 = 100;
/// Packets that fail to decode before the whole file is refused; a stray
/// bad frame in a long MP3 is common and inaudible.
const BAD_PACKETS_ALLOWED: usize = 3;

/// One input, read a packet at a time.
pub struct Decoder {
    name: String,
    format: Box<dyn FormatReader>,
    decoder: Box<dyn symphonia::core::codecs::Decoder>,
    track_id: u32,
    rate: Option<u32>,
    channels: Option<usize>,
    expected_frames: Option<u64>,
    lossy: bool,
    buffer: Option<SampleBuffer<f32>>,
    bad_packets: usize,
    decoded_frames: u64,
    done: bool,
}

impl Decoder {
    /// Opens a file on disk. `name` (its URL) is used in every message.
    pub fn open(name: &str, path: &Path, extension: Option<&str>) -> Result<Self, Failure> {
        let file = std::fs::File::open(path).map_err(|e| super::spill::scratch_failure(path, e))?;
        Self::new(name, Box::new(file), extension)
    }

    /// Reads `source`, probing its container with `extension` as a hint.
    pub fn new(
        name: &str,
        source: Box<dyn MediaSource>,
        extension: Option<&str>,
    ) -> Result<Self, Failure> {
        let corrupt = |why: String| corrupt(name, why);
        let source = MediaSourceStream::new(source, Default::default());
        let mut hint = Hint::new();
        if let Some(extension) = extension {
            hint.with_extension(extension);
        }
        let probed = symphonia::default::get_probe()
            .format(
                &hint,
                source,
                &FormatOptions::default(),
                &MetadataOptions::default(),
            )
            .map_err(|e| corrupt(format!("not a WAV, MP3, FLAC or Ogg Vorbis file ({e})")))?;
        let format = probed.format;
        let track = format
            .default_track()
            .ok_or_else(|| corrupt("has no audio track".into()))?;
        let decoder = symphonia::default::get_codecs()
            .make(&track.codec_params, &DecoderOptions::default())
            .map_err(|e| corrupt(format!("unsupported codec ({e})")))?;
        Ok(Self {
            name: name.to_owned(),
            track_id: track.id,
            rate: track.codec_params.sample_rate,
            channels: track.codec_params.channels.map(|c| c.count()),
            expected_frames: track.codec_params.n_frames,
            lossy: [CODEC_TYPE_MP3, CODEC_TYPE_VORBIS].contains(&track.codec_params.codec),
            format,
            decoder,
            buffer: None,
            bad_packets: 0,
            decoded_frames: 0,
            done: false,
        })
    }

    /// The sample rate, once the header or the first packet has said it.
    pub fn rate(&self) -> Option<u32> {
        self.rate
    }

    /// The channel count, once the header or the first packet has said it.
    pub fn channels(&self) -> Option<usize> {
        self.channels
    }

    /// The length the container declares, when it declares one.
    pub fn expected_frames(&self) -> Option<u64> {
        self.expected_frames
    }

    /// Frames decoded so far.
    pub fn decoded_frames(&self) -> u64 {
        self.decoded_frames
    }

    /// The next packet's audio, or `None` at the end, where the length is
    /// checked against the header's.
    pub fn next_block(&mut self) -> Result<Option<Block>, Failure> {
        while !self.done {
            let packet = match self.format.next_packet() {
                Ok(packet) => packet,
                Err(SymphoniaError::IoError(e))
                    if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    self.done = true;
                    break;
                }
                Err(SymphoniaError::ResetRequired) => {
                    return Err(self.corrupt("changes its stream parameters midway".into()));
                }
                Err(e) => return Err(self.corrupt(format!("cannot read the container ({e})"))),
            };
            if packet.track_id() != self.track_id {
                continue;
            }
            let decoded = match self.decoder.decode(&packet) {
                Ok(decoded) => decoded,
                Err(SymphoniaError::DecodeError(why)) => {
                    self.bad_packets += 1;
                    if self.bad_packets > BAD_PACKETS_ALLOWED {
                        let count = self.bad_packets;
                        return Err(self.corrupt(format!(
                            "is corrupt: {count} packets failed to decode (last: {why})"
                        )));
                    }
                    continue;
                }
                Err(SymphoniaError::IoError(e))
                    if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    self.done = true;
                    break;
                }
                Err(e) => return Err(self.corrupt(format!("cannot decode ({e})"))),
            };
            let spec = *decoded.spec();
            self.rate.get_or_insert(spec.rate);
            let count = spec.channels.count();
            if self.decoded_frames > 0 && self.channels != Some(count) {
                return Err(self.corrupt("changes its channel count midway".into()));
            }
            self.channels = Some(count);
            let frames = decoded.frames();
            if frames == 0 {
                continue;
            }
            let samples = match &mut self.buffer {
                Some(b) if b.capacity() >= decoded.capacity() * count => b,
                _ => self
                    .buffer
                    .insert(SampleBuffer::new(decoded.capacity() as u64, spec)),
            };
            samples.copy_planar_ref(decoded);
            let planar = samples.samples();
            self.decoded_frames += frames as u64;
            return Ok(Some(
                (0..count)
                    .map(|c| planar[c * frames..(c + 1) * frames].to_vec())
                    .collect(),
            ));
        }
        self.check_length()?;
        Ok(None)
    }

    fn check_length(&self) -> Result<(), Failure> {
        if self.decoded_frames == 0 {
            return Err(self.corrupt("holds no audio".into()));
        }
        let allowed = |expected: u64| {
            SHORT_FRAMES_ALLOWED
                + if self.lossy {
                    expected / LOSSY_SHORT_FRACTION
                } else {
                    0
                }
        };
        if let Some(expected) = self.expected_frames
            && self.decoded_frames + allowed(expected) < expected
        {
            let decoded = self.decoded_frames;
            return Err(self.corrupt(format!("is truncated: {decoded} of {expected} frames")));
        }
        if self.rate.is_none() {
            return Err(self.corrupt("does not say its sample rate".into()));
        }
        Ok(())
    }

    fn corrupt(&self, why: String) -> Failure {
        corrupt(&self.name, why)
    }
}

fn corrupt(name: &str, why: String) -> Failure {
    Failure {
        reason: FailureReason::UndecodableAudio,
        message: format!("{name}: {why}"),
        retryable: false,
    }
}

/// Decodes a whole file held in memory: for tests and short clips.
pub fn decode(name: &str, extension: Option<&str>, bytes: Bytes) -> Result<Audio, Failure> {
    let mut decoder = Decoder::new(name, Box::new(Cursor::new(bytes)), extension)?;
    let mut channels: Vec<Vec<f32>> = Vec::new();
    while let Some(block) = decoder.next_block()? {
        if channels.is_empty() {
            channels = vec![Vec::new(); block.len()];
        }
        for (channel, samples) in channels.iter_mut().zip(block) {
            channel.extend_from_slice(&samples);
        }
    }
    let rate = decoder
        .rate()
        .ok_or_else(|| corrupt(name, "does not say its sample rate".into()))?;
    Ok(Audio { rate, channels })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(frames: usize) -> Vec<u8> {
        let spec = hound::WavSpec {
            channels: 2,
            sample_rate: 8000,
            bits_per_sample: 16,
            sample_format: hound::SampleFormat::Int,
        };
        let mut out = Cursor::new(Vec::new());
        let mut writer = hound::WavWriter::new(&mut out, spec).unwrap();
        for i in 0..frames {
            let v = ((i as f32 * 0.05).sin() * 10_000.0) as i16;
            writer.write_sample(v).unwrap();
            writer.write_sample(-v).unwrap();
        }
        writer.finalize().unwrap();
        out.into_inner()
    }

    #[test]
    fn a_wav_decodes_to_planar_channels() {
        let audio = decode("file:///a.wav", Some("wav"), Bytes::from(wav(8000))).unwrap();
        assert_eq!((audio.rate, audio.channels.len()), (8000, 2));
        assert_eq!(audio.frames(), 8000);
        assert!((audio.channels[0][20] + audio.channels[1][20]).abs() < 1e-6);
    }

    #[test]
    fn a_file_on_disk_streams_in_packets_that_add_up() {
        let path = std::env::temp_dir().join(format!("drover-decode-{}.wav", std::process::id()));
        std::fs::write(&path, wav(20_000)).unwrap();
        let mut decoder = Decoder::open("file:///d.wav", &path, Some("wav")).unwrap();
        assert_eq!(
            (
                decoder.rate(),
                decoder.channels(),
                decoder.expected_frames()
            ),
            (Some(8000), Some(2), Some(20_000))
        );
        let mut blocks = 0;
        let mut frames = 0;
        while let Some(block) = decoder.next_block().unwrap() {
            blocks += 1;
            frames += block[0].len();
        }
        assert!(blocks > 1, "one packet held the whole file");
        assert_eq!(frames, 20_000);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_truncated_wav_is_refused_and_named() {
        let mut bytes = wav(16_000);
        bytes.truncate(bytes.len() / 2);
        let failure = decode("file:///cut.wav", Some("wav"), Bytes::from(bytes)).unwrap_err();
        assert_eq!(
            (failure.reason, failure.retryable),
            (FailureReason::UndecodableAudio, false)
        );
        assert!(
            failure.message.starts_with("file:///cut.wav: is truncated"),
            "{}",
            failure.message
        );
    }

    #[test]
    fn noise_is_not_audio() {
        let bytes = "this is a podcast, honest. ".repeat(200);
        let failure = decode("s3://b/noise.mp3", Some("mp3"), Bytes::from(bytes)).unwrap_err();
        assert_eq!(
            (failure.reason, failure.retryable),
            (FailureReason::UndecodableAudio, false)
        );
        assert!(
            failure.message.contains("s3://b/noise.mp3"),
            "{}",
            failure.message
        );
    }
}
