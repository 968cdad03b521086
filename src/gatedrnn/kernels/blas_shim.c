/* The names gatedrnn_sgemm / gatedrnn_dgemm that the kernels compiled at install call (see
 * kernels/cpu.py, bind_blas): each forwards to the Fortran sgemm_ / dgemm_ whose address
 * gatedrnn_set_blas was given when the module was loaded (kernels/aot.py, load). */
#include <stdint.h>

typedef void (*gemm_fn)(intptr_t, intptr_t, intptr_t, intptr_t, intptr_t, intptr_t, intptr_t,
                        intptr_t, intptr_t, intptr_t, intptr_t, intptr_t, intptr_t);
static gemm_fn sgemm, dgemm;

void gatedrnn_set_blas(intptr_t s, intptr_t d) {
    sgemm = (gemm_fn)s;
    dgemm = (gemm_fn)d;
}

void gatedrnn_sgemm(intptr_t a, intptr_t b, intptr_t c, intptr_t d, intptr_t e, intptr_t f,
                    intptr_t g, intptr_t h, intptr_t i, intptr_t j, intptr_t k, intptr_t l,
                    intptr_t m) {
    sgemm(a, b, c, d, e, f, g, h, i, j, k, l, m);
}

void gatedrnn_dgemm(intptr_t a, intptr_t b, intptr_t c, intptr_t d, intptr_t e, intptr_t f,
                    intptr_t g, intptr_t h, intptr_t i, intptr_t j, intptr_t k, intptr_t l,
                    intptr_t m) {
    dgemm(a, b, c, d, e, f, g, h, i, j, k, l, m);
}
