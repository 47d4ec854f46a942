//! The matrix-multiply core of the CPU backend (not an op family of its own, so it lives
//! outside `backend/cpu/`, whose files mirror `kernels/` and `shaders/` stem for stem): a thin safe wrapper over the `gemm` crate.
//!
//! Chosen by measurement against a hand-written register-tiled loop and `matrixmultiply`
//! (`cargo bench --bench gemm`; figures in the README): `gemm` ships AVX-512 micro-kernels
//! selected at run time, which the others lack.
use crate::backend::cpu::Real;

/// A strided read-only matrix view: element (i, j) is `data[i·rs + j·cs]`.
#[derive(Clone, Copy)]
pub struct View<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: usize,
    pub cs: usize,
}

impl<'a, T> View<'a, T> {
    /// Row-major `rows × cols` matrix.
    pub fn rm(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows,
            cols,
            rs: cols,
            cs: 1,
        }
    }
    /// The transpose of a row-major `rows × cols` matrix (a `cols × rows` view).
    pub fn rm_t(data: &'a [T], rows: usize, cols: usize) -> Self {
        Self {
            data,
            rows: cols,
            cols: rows,
            rs: 1,
            cs: cols,
        }
    }
    /// The same shape and strides over other data (of another element type).
    pub fn with_data<'b, U>(&self, data: &'b [U]) -> View<'b, U> {
        View {
            data,
            rows: self.rows,
            cols: self.cols,
            rs: self.rs,
            cs: self.cs,
        }
    }
    fn check(&self) {
        if self.rows > 0 && self.cols > 0 {
            let last = (self.rows - 1) * self.rs + (self.cols - 1) * self.cs;
            assert!(last < self.data.len(), "matrix view out of bounds");
        }
    }
}

/// `dst[m×n] (row-major) = (accumulate ? dst : 0) + a[m×k] · b[k×n]`, single-threaded (callers
/// parallelise over ensemble members and row tiles).
pub fn matmul<T: Real>(dst: &mut [T], a: View<'_, T>, b: View<'_, T>, accumulate: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    assert_eq!(b.rows, k, "inner dimensions differ");
    assert!(dst.len() >= m * n, "destination too small");
    a.check();
    b.check();
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            dst[..m * n].iter_mut().for_each(|v| *v = T::zero());
        }
        return;
    }
    // SAFETY: the views were bounds-checked above for every (i, j) they can address, `dst`
    // holds m·n elements, and `dst` cannot alias `a`/`b` (it is a unique borrow).
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            a.data.as_ptr(),
            a.cs as isize,
            a.rs as isize,
            b.data.as_ptr(),
            b.cs as isize,
            b.rs as isize,
            T::one(),
            T::one(),
            false,
            false,
            false,
            gemm::Parallelism::None,
        )
    }
}

/// Multi-threaded f32 product of row-major matrices, used to measure the machine's GEMM peak.
pub fn matmul_f32_parallel(dst: &mut [f32], a: &[f32], b: &[f32], m: usize, k: usize, n: usize) {
    assert!(a.len() >= m * k && b.len() >= k * n && dst.len() >= m * n);
    // SAFETY: lengths checked above; row-major strides.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.as_mut_ptr(),
            1,
            n as isize,
            false,
            a.as_ptr(),
            1,
            k as isize,
            b.as_ptr(),
            1,
            n as isize,
            0.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::Rayon(rayon::current_num_threads()),
        )
    }
}

/// The widest SIMD level this process can use, for `devices` and benchmark reports.
pub fn simd_level() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            return "avx512f";
        }
        if std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
        {
            return "avx2+fma";
        }
        "sse2"
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        "portable"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matmul_should_match_naive_product_with_transposed_views() {
        let (m, k, n) = (13, 7, 5);
        let a: Vec<f64> = (0..m * k).map(|i| (i as f64 * 0.37).sin()).collect();
        let b: Vec<f64> = (0..k * n).map(|i| (i as f64 * 0.11).cos()).collect();
        let mut want = vec![0.0; m * n];
        for i in 0..m {
            for j in 0..n {
                for t in 0..k {
                    want[i * n + j] += a[i * k + t] * b[t * n + j];
                }
            }
        }
        let mut got = vec![1.0; m * n];
        matmul(&mut got, View::rm(&a, m, k), View::rm(&b, k, n), false);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - w).abs() < 1e-12);
        }
        // aᵀ stored as k×m, viewed transposed, accumulating onto the previous result.
        let mut at = vec![0.0; k * m];
        for i in 0..m {
            for t in 0..k {
                at[t * m + i] = a[i * k + t];
            }
        }
        matmul(&mut got, View::rm_t(&at, k, m), View::rm(&b, k, n), true);
        for (g, w) in got.iter().zip(&want) {
            assert!((g - 2.0 * w).abs() < 1e-12);
        }
    }
}
