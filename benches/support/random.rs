//! Incompressible test data for the transfer benchmarks (shared by
//! `upload` and `ssh` through `#[path]`).

use std::io::Write;
use std::path::Path;

/// Writes `bytes` of pseudo-random, incompressible data to `path`.
pub fn random_file(path: &Path, bytes: usize) {
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).expect("create"));
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut block = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        for chunk in block.chunks_mut(8) {
            // xorshift64*: incompressible enough for a transfer benchmark.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            let v = state.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
        let n = left.min(block.len());
        f.write_all(&block[..n]).expect("write");
        left -= n;
    }
    f.flush().expect("flush");
}
