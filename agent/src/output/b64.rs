//! Standard base64 (padded) appended to a buffer, as the JSON output writes payloads: 24
//! input bytes per step with AVX2 when the CPU has it (the reshuffle and translation of
//! Muła and Lemire, "Faster Base64 Encoding and Decoding using AVX2 Instructions", 2018),
//! the `base64` crate for the rest and on other CPUs. The output is the `base64` crate's,
//! byte for byte (tested below).

use base64::Engine as _;

/// Appends the standard base64 of `bytes` to `out`.
pub fn push_base64(out: &mut Vec<u8>, bytes: &[u8]) {
    let n = base64::encoded_len(bytes.len(), true).expect("payload size fits base64");
    out.reserve(n);
    #[allow(unused_mut)]
    let mut done = 0;
    #[cfg(target_arch = "x86_64")]
    if bytes.len() >= 32 && std::arch::is_x86_feature_detected!("avx2") {
        let start = out.len();
        // SAFETY: the CPU has AVX2; `out` has room for the `n` bytes of the whole encoding
        // past `start`, of which `avx2::encode` writes `done / 3 * 4`, all initialized.
        unsafe {
            done = avx2::encode(bytes, out.as_mut_ptr().add(start));
            out.set_len(start + done / 3 * 4);
        }
    }
    // `done` is a multiple of 3: the rest encodes on its own.
    let rest = &bytes[done..];
    let start = out.len();
    out.resize(start + (n - done / 3 * 4), 0);
    let written = base64::engine::general_purpose::STANDARD
        .encode_slice(rest, &mut out[start..])
        .expect("room for the encoding");
    debug_assert_eq!(start + written, out.len());
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    /// Sextets: each 32-bit lane of the result holds the four 6-bit values of 3 input bytes,
    /// one per byte, in output order. The input is shifted by 4 bytes: lane 0 holds its 12
    /// bytes at 4..16, lane 1 at 0..12.
    #[target_feature(enable = "avx2")]
    fn reshuffle(v: __m256i) -> __m256i {
        let v = _mm256_shuffle_epi8(
            v,
            _mm256_set_epi8(
                10, 11, 9, 10, 7, 8, 6, 7, 4, 5, 3, 4, 1, 2, 0, 1, //
                14, 15, 13, 14, 11, 12, 10, 11, 8, 9, 7, 8, 5, 6, 4, 5,
            ),
        );
        let t0 = _mm256_and_si256(v, _mm256_set1_epi32(0x0FC0_FC00));
        let t1 = _mm256_mulhi_epu16(t0, _mm256_set1_epi32(0x0400_0040));
        let t2 = _mm256_and_si256(v, _mm256_set1_epi32(0x003F_03F0));
        let t3 = _mm256_mullo_epi16(t2, _mm256_set1_epi32(0x0100_0010));
        _mm256_or_si256(t1, t3)
    }

    /// 6-bit values to the standard alphabet: an offset per range (A-Z, a-z, 0-9, +, /).
    #[target_feature(enable = "avx2")]
    fn translate(v: __m256i) -> __m256i {
        let lut = _mm256_setr_epi8(
            65, 71, -4, -4, -4, -4, -4, -4, -4, -4, -4, -4, -19, -16, 0, 0, //
            65, 71, -4, -4, -4, -4, -4, -4, -4, -4, -4, -4, -19, -16, 0, 0,
        );
        // 0 for 0..=25, 1 for 26..=51 (0, minus the -1 of the mask), 2..=11 for digits, 12
        // for 62, 13 for 63.
        let idx = _mm256_subs_epu8(v, _mm256_set1_epi8(51));
        let mask = _mm256_cmpgt_epi8(v, _mm256_set1_epi8(25));
        let idx = _mm256_sub_epi8(idx, mask);
        _mm256_add_epi8(v, _mm256_shuffle_epi8(lut, idx))
    }

    /// Encodes the longest prefix of `src` this loop can (a multiple of 24 bytes, 0 when
    /// `src` is shorter than 32) into `dst`, and returns its length.
    ///
    /// # Safety
    /// The CPU has AVX2; `dst` has room for `src.len() / 3 * 4` bytes.
    #[target_feature(enable = "avx2")]
    pub unsafe fn encode(src: &[u8], dst: *mut u8) -> usize {
        let n = src.len();
        if n < 32 {
            return 0;
        }
        let p = src.as_ptr();
        // SAFETY: every load reads 32 bytes within `src` (the first at 0, the others at
        // `i - 4` with `i + 28 <= n`); every store writes 32 bytes at `i / 3 * 4` for an
        // `i` whose 24 bytes are in `src`, within `dst`'s `n / 3 * 4` bytes.
        unsafe {
            // The first 28 bytes, moved up by 4 (dwords 0, 0, 1, ..., 6).
            let v = _mm256_loadu_si256(p.cast());
            let v = _mm256_permutevar8x32_epi32(v, _mm256_setr_epi32(0, 0, 1, 2, 3, 4, 5, 6));
            _mm256_storeu_si256(dst.cast(), translate(reshuffle(v)));
            let mut i = 24;
            let mut o = 32;
            while i + 28 <= n {
                let v = _mm256_loadu_si256(p.add(i - 4).cast());
                _mm256_storeu_si256(dst.add(o).cast(), translate(reshuffle(v)));
                i += 24;
                o += 32;
            }
            i
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_as_the_base64_crate() {
        let std = &base64::engine::general_purpose::STANDARD;
        // Every byte value in every position, lengths around the 24/32-byte steps.
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        let data: Vec<u8> = (0..70_000)
            .map(|i| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                if i < 4096 { i as u8 } else { seed as u8 }
            })
            .collect();
        let mut lens: Vec<usize> = (0..=200).collect();
        lens.extend([1000, 4095, 4096, 4097, 16384, 65535, 65536, 70_000]);
        for &len in &lens {
            for off in [0, 1, 5, 4096 - 7] {
                if off + len > data.len() {
                    continue;
                }
                let b = &data[off..off + len];
                let mut out = b"prefix".to_vec();
                push_base64(&mut out, b);
                assert_eq!(
                    std::str::from_utf8(&out[6..]).unwrap(),
                    std.encode(b),
                    "length {len} at {off}"
                );
                assert_eq!(&out[..6], b"prefix");
            }
        }
    }
}
