//! Compressed or PCM bytes to planar f32 through symphonia: WAV, MP3, FLAC
//! and Ogg Vorbis. A file that is not audio, is damaged or ends early is the
//! input's fault, so the failure is permanent and names the file.

use std::io::Cursor;

use bytes::Bytes;
use drover_crds::FailureReason;
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{CODEC_TYPE_MP3, CODEC_TYPE_VORBIS, DecoderOptions};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

use super::Audio;
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

/// Decodes a whole file. `name` (its URL) is used in every message.
pub fn decode(name: &str, extension: Option<&str>, bytes: Bytes) -> Result<Audio, Failure> {
    let corrupt = |why: String| Failure {
        reason: FailureReason::UndecodableAudio,
        message: format!("{name}: {why}"),
        retryable: false,
    };
    let source = MediaSourceStream::new(Box::new(Cursor::new(bytes)), Default::default());
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
    let mut format = probed.format;
    let track = format
        .default_track()
        .ok_or_else(|| corrupt("has no audio track".into()))?;
    let track_id = track.id;
    let expected_frames = track.codec_params.n_frames;
    let lossy = [CODEC_TYPE_MP3, CODEC_TYPE_VORBIS].contains(&track.codec_params.codec);
    let mut rate = track.codec_params.sample_rate;
    let mut decoder = symphonia::default::get_codecs()
        .make(&track.codec_params, &DecoderOptions::default())
        .map_err(|e| corrupt(format!("unsupported codec ({e})")))?;

    let mut channels: Vec<Vec<f32>> = Vec::new();
    let mut buffer: Option<SampleBuffer<f32>> = None;
    let mut bad_packets = 0;
    loop {
        let packet = match format.next_packet() {
            Ok(packet) => packet,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break;
            }
            Err(SymphoniaError::ResetRequired) => {
                return Err(corrupt("changes its stream parameters midway".into()));
            }
            Err(e) => return Err(corrupt(format!("cannot read the container ({e})"))),
        };
        if packet.track_id() != track_id {
            continue;
        }
        let decoded = match decoder.decode(&packet) {
            Ok(decoded) => decoded,
            Err(SymphoniaError::DecodeError(why)) => {
                bad_packets += 1;
                if bad_packets > BAD_PACKETS_ALLOWED {
                    return Err(corrupt(format!(
                        "is corrupt: {bad_packets} packets failed to decode (last: {why})"
                    )));
                }
                continue;
            }
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                break;
            }
            Err(e) => return Err(corrupt(format!("cannot decode ({e})"))),
        };
        let spec = *decoded.spec();
        rate.get_or_insert(spec.rate);
        let count = spec.channels.count();
        if channels.is_empty() {
            channels = vec![Vec::new(); count];
        } else if channels.len() != count {
            return Err(corrupt("changes its channel count midway".into()));
        }
        let frames = decoded.frames();
        if frames == 0 {
            continue;
        }
        let samples = match &mut buffer {
            Some(b) if b.capacity() >= decoded.capacity() * count => b,
            _ => buffer.insert(SampleBuffer::new(decoded.capacity() as u64, spec)),
        };
        samples.copy_planar_ref(decoded);
        let planar = samples.samples();
        for (c, channel) in channels.iter_mut().enumerate() {
            channel.extend_from_slice(&planar[c * frames..(c + 1) * frames]);
        }
    }

    let decoded_frames = channels.first().map_or(0, Vec::len) as u64;
    if decoded_frames == 0 {
        return Err(corrupt("holds no audio".into()));
    }
    let allowed = |expected: u64| {
        SHORT_FRAMES_ALLOWED
            + if lossy {
                expected / LOSSY_SHORT_FRACTION
            } else {
                0
            }
    };
    if let Some(expected) = expected_frames
        && decoded_frames + allowed(expected) < expected
    {
        return Err(corrupt(format!(
            "is truncated: {decoded_frames} of {expected} frames"
        )));
    }
    let rate = rate.ok_or_else(|| corrupt("does not say its sample rate".into()))?;
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
