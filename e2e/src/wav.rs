//! Test audio: 16-bit PCM WAV files of a signal, for the assembly samples
//! and tests (no recordings in the repository).

use std::path::Path;

/// Writes `seconds` of `signal(t, channel)` (clamped to -1..1) at `rate` Hz
/// as a 16-bit PCM WAV.
pub fn write_pcm16(
    path: &Path,
    rate: u32,
    channels: u16,
    seconds: f64,
    signal: impl Fn(f64, usize) -> f64,
) -> std::io::Result<()> {
    let frames = (seconds * f64::from(rate)) as u32;
    let data_len = frames * u32::from(channels) * 2;
    let mut bytes = Vec::with_capacity(44 + data_len as usize);
    bytes.extend_from_slice(b"RIFF");
    bytes.extend_from_slice(&(36 + data_len).to_le_bytes());
    bytes.extend_from_slice(b"WAVEfmt ");
    bytes.extend_from_slice(&16u32.to_le_bytes());
    bytes.extend_from_slice(&1u16.to_le_bytes()); // PCM
    bytes.extend_from_slice(&channels.to_le_bytes());
    bytes.extend_from_slice(&rate.to_le_bytes());
    bytes.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
    bytes.extend_from_slice(&(channels * 2).to_le_bytes());
    bytes.extend_from_slice(&16u16.to_le_bytes());
    bytes.extend_from_slice(b"data");
    bytes.extend_from_slice(&data_len.to_le_bytes());
    for i in 0..frames {
        let t = f64::from(i) / f64::from(rate);
        for c in 0..usize::from(channels) {
            let sample = (signal(t, c).clamp(-1.0, 1.0) * 32767.0) as i16;
            bytes.extend_from_slice(&sample.to_le_bytes());
        }
    }
    std::fs::write(path, bytes)
}
