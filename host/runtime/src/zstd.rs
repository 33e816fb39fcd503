//! zstd-compressed layers (`application/vnd.oci.image.layer.v1.tar+zstd`), decoded with the
//! pure-Rust `ruzstd` (no C library to build). A layer may hold several frames, and skippable
//! frames (zstd:chunked puts its table of contents in one); all frames are decoded in order
//! and skippable ones are passed over, which one `StreamingDecoder` alone does not do.

use std::io::{BufRead, Read};

use ruzstd::decoding::errors::{FrameDecoderError, ReadFrameHeaderError};
use ruzstd::decoding::{BlockDecodingStrategy, FrameDecoder};

/// Whether a blob starting with these bytes is zstd: a frame or a skippable frame
/// (magic numbers 0xFD2FB528 and 0x184D2A50–5F, little-endian).
pub fn is_zstd(magic: [u8; 4]) -> bool {
    magic == [0x28, 0xb5, 0x2f, 0xfd]
        || (magic[0] & 0xf0 == 0x50 && magic[1..] == [0x2a, 0x4d, 0x18])
}

/// Decodes every frame of a zstd stream, one after another.
pub struct FramesReader<R: BufRead> {
    source: R,
    decoder: FrameDecoder,
    in_frame: bool,
}

impl<R: BufRead> FramesReader<R> {
    pub fn new(source: R) -> Self {
        FramesReader {
            source,
            decoder: FrameDecoder::new(),
            in_frame: false,
        }
    }
}

impl<R: BufRead> Read for FramesReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            if self.in_frame {
                if self.decoder.can_collect() > 0 {
                    return self.decoder.read(buf);
                }
                if self.decoder.is_finished() {
                    self.in_frame = false;
                    continue;
                }
                self.decoder
                    .decode_blocks(&mut self.source, BlockDecodingStrategy::UptoBlocks(1))
                    .map_err(|e| std::io::Error::other(format!("zstd data: {e}")))?;
                continue;
            }
            if self.source.fill_buf()?.is_empty() {
                return Ok(0);
            }
            match self.decoder.init(&mut self.source) {
                Ok(()) => self.in_frame = true,
                // The header is read; `length` bytes of payload follow.
                Err(FrameDecoderError::ReadFrameHeaderError(ReadFrameHeaderError::SkipFrame {
                    length,
                    ..
                })) => {
                    let skipped = std::io::copy(
                        &mut (&mut self.source).take(u64::from(length)),
                        &mut std::io::sink(),
                    )?;
                    if skipped < u64::from(length) {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "zstd stream ends inside a skippable frame",
                        ));
                    }
                }
                Err(FrameDecoderError::WindowSizeTooBig { requested, max }) => {
                    return Err(std::io::Error::other(format!(
                        "zstd frame needs a {requested}-byte window, more than the {max} bytes Nimbus allows (a layer compressed with `zstd --long`?); recompress the layer without --long"
                    )))
                }
                Err(e) => return Err(std::io::Error::other(format!("zstd frame header: {e}"))),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ruzstd::encoding::{compress_to_vec, CompressionLevel};

    #[test]
    fn several_frames_and_skippable_ones_decode_in_order() {
        let first: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let second = b"and a second frame".to_vec();
        let mut stream = Vec::new();
        // A skippable frame first, as zstd:chunked may write.
        stream.extend_from_slice(&[0x50, 0x2a, 0x4d, 0x18]);
        stream.extend_from_slice(&5u32.to_le_bytes());
        stream.extend_from_slice(b"12345");
        stream.extend(compress_to_vec(&first[..], CompressionLevel::Fastest));
        stream.extend(compress_to_vec(&second[..], CompressionLevel::Fastest));
        assert!(is_zstd(stream[..4].try_into().unwrap()));
        let mut out = Vec::new();
        FramesReader::new(&stream[..])
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, [first, second].concat());
    }

    #[test]
    fn corrupt_and_truncated_streams_are_errors() {
        let mut frame = compress_to_vec(&b"hello hello hello"[..], CompressionLevel::Fastest);
        let truncated = &frame[..frame.len() - 3];
        assert!(FramesReader::new(truncated)
            .read_to_end(&mut Vec::new())
            .is_err());
        frame[5] ^= 0xff;
        let mut out = Vec::new();
        let decoded = FramesReader::new(&frame[..]).read_to_end(&mut out);
        assert!(decoded.is_err() || out != b"hello hello hello");
        assert!(!is_zstd(*b"\x1f\x8b\x08\x00"));
    }
}
