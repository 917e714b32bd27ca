//! Decoded, resampled audio parked on local disk between passes: the mix is
//! rendered more than once (to measure it, then to encode it), and reading
//! back raw f32 frames costs far less than decoding and resampling again,
//! while memory holds only a block at a time.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use drover_crds::FailureReason;

use super::Block;
use crate::pipelines::Failure;

const BUFFER_BYTES: usize = 1 << 20;
const SAMPLE_BYTES: usize = 4;

/// A failure of the worker's own scratch disk: another attempt (maybe on
/// another pod) may have room.
pub fn scratch_failure(path: &Path, why: impl std::fmt::Display) -> Failure {
    Failure {
        reason: FailureReason::StorageUnavailable,
        message: format!("scratch file {}: {why}", path.display()),
        retryable: true,
    }
}

/// Writes planar blocks as interleaved native-endian f32 frames.
pub struct SpillWriter {
    path: PathBuf,
    out: BufWriter<File>,
    channels: usize,
    frames: u64,
    bytes: Vec<u8>,
}

impl SpillWriter {
    pub fn create(path: &Path, channels: usize) -> Result<Self, Failure> {
        let file = File::create(path).map_err(|e| scratch_failure(path, e))?;
        Ok(Self {
            path: path.to_owned(),
            out: BufWriter::with_capacity(BUFFER_BYTES, file),
            channels,
            frames: 0,
            bytes: Vec::new(),
        })
    }

    pub fn write(&mut self, block: &Block) -> Result<(), Failure> {
        let frames = block.first().map_or(0, Vec::len);
        self.bytes.clear();
        self.bytes.reserve(frames * self.channels * SAMPLE_BYTES);
        for i in 0..frames {
            for channel in block {
                self.bytes.extend_from_slice(&channel[i].to_ne_bytes());
            }
        }
        self.out
            .write_all(&self.bytes)
            .map_err(|e| scratch_failure(&self.path, e))?;
        self.frames += frames as u64;
        Ok(())
    }

    pub fn finish(mut self) -> Result<Spill, Failure> {
        self.out
            .flush()
            .map_err(|e| scratch_failure(&self.path, e))?;
        Ok(Spill {
            path: self.path,
            channels: self.channels,
            frames: self.frames,
        })
    }
}

/// A finished spill file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spill {
    pub path: PathBuf,
    pub channels: usize,
    pub frames: u64,
}

impl Spill {
    pub fn reader(&self) -> Result<SpillReader, Failure> {
        let file = File::open(&self.path).map_err(|e| scratch_failure(&self.path, e))?;
        Ok(SpillReader {
            path: self.path.clone(),
            input: BufReader::with_capacity(BUFFER_BYTES, file),
            channels: self.channels,
            bytes: Vec::new(),
        })
    }
}

/// Reads a spill back in blocks, from the start or from a frame.
pub struct SpillReader {
    path: PathBuf,
    input: BufReader<File>,
    channels: usize,
    bytes: Vec<u8>,
}

impl SpillReader {
    /// Moves to `frame`, for a bed that loops.
    pub fn seek(&mut self, frame: u64) -> Result<(), Failure> {
        let offset = frame * (self.channels * SAMPLE_BYTES) as u64;
        self.input
            .seek(SeekFrom::Start(offset))
            .map(|_| ())
            .map_err(|e| scratch_failure(&self.path, e))
    }

    /// Reads exactly `frames` frames into `block` (planar, replaced).
    pub fn read(&mut self, frames: usize, block: &mut Block) -> Result<(), Failure> {
        self.bytes.resize(frames * self.channels * SAMPLE_BYTES, 0);
        self.input
            .read_exact(&mut self.bytes)
            .map_err(|e| scratch_failure(&self.path, e))?;
        block.resize(self.channels, Vec::new());
        for (c, channel) in block.iter_mut().enumerate() {
            channel.clear();
            channel.extend(
                self.bytes
                    .chunks_exact(SAMPLE_BYTES)
                    .skip(c)
                    .step_by(self.channels)
                    .map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])),
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_come_back_as_they_went_in_from_any_frame() {
        let path = std::env::temp_dir().join(format!("drover-spill-{}", std::process::id()));
        let mut writer = SpillWriter::create(&path, 2).unwrap();
        writer
            .write(&vec![vec![1.0, 2.0, 3.0], vec![-1.0, -2.0, -3.0]])
            .unwrap();
        writer.write(&vec![vec![4.0], vec![-4.0]]).unwrap();
        let spill = writer.finish().unwrap();
        assert_eq!((spill.channels, spill.frames), (2, 4));
        let mut reader = spill.reader().unwrap();
        let mut block = Vec::new();
        reader.read(4, &mut block).unwrap();
        assert_eq!(
            block,
            vec![vec![1.0, 2.0, 3.0, 4.0], vec![-1.0, -2.0, -3.0, -4.0]]
        );
        reader.seek(2).unwrap();
        reader.read(1, &mut block).unwrap();
        assert_eq!(block, vec![vec![3.0], vec![-3.0]]);
        assert!(reader.read(5, &mut block).is_err(), "read past the end");
        std::fs::remove_file(&path).unwrap();
    }
}
