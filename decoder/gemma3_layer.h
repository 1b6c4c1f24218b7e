/* A Gemma 3 layer's calls (a decoded token in one, a prompt's rows in two) and the helpers of theirs
   that are the same on every vector width, written once for both kernel sources. Each source
   defines its vector parts first, then includes this: rms_norm, norm_rows, geglu, dot_row,
   exp_scores and weigh_values (a decoded token's attention), attend_tile with QROWS and KCOLS (a
   prompt's), int8_linear; the 4-bit products are int4_q8.h's. */
#ifndef MMSDK_GEMMA3_LAYER_H
#define MMSDK_GEMMA3_LAYER_H
#include "kernels.h"
#include "int4_q8.h"

/* ---- one decoded token through one Gemma 3 layer, in one call --------------------------------
   The same computation as gemma3.Block for one row (B = T = 1), float32 activations, every
   projection one of the products above (int8, or torch's 4-bit layout): what costs the Python step
   is not arithmetic but ~55 small torch ops a layer (~2-4 us of dispatch each), so the whole layer
   is one call here. The structs: kernels.h (decoder/fused.py mirrors them). */

static void linear_rows(const Linear *w, const float *x, long M, float *y) {
    if (w->group > 0)
        int4_linear(x, M, w->in, w->weight, w->group_scales, w->super_scales, w->layout, w->group, y, w->out);
    else
        int8_linear(x, M, w->in, w->rotation, w->weight, w->scales, w->comp, y, w->out);
}

/* A prompt's q, k and v from its qkv rows (T, H + 2 Hkv, D): q and k QK-normed (gain rows
   (H + Hkv, D)) and rotated (cos, sin: (T, D)), all three laid out by head (heads, T, D), the
   layout attention and the KV cache take. */
void qkv_heads(const float *qkv, long T, long H, long Hkv, long D, const float *gain, float eps_term,
               const float *cos, const float *sin, float *q, float *k, float *v) {
    #pragma omp parallel for schedule(static)
    for (long t = 0; t < T; t++) {
        float tmp[D];
        for (long i = 0; i < H + 2 * Hkv; i++) {
            const float *src = qkv + (t * (H + 2 * Hkv) + i) * D;
            float *dst = i < H ? q + (i * T + t) * D : i < H + Hkv ? k + ((i - H) * T + t) * D : v + ((i - H - Hkv) * T + t) * D;
            if (i < H + Hkv) {
                rms_norm(dst, src, gain + i * D, D, eps_term, NULL);
                rope(dst, cos + t * D, sin + t * D, D, tmp);
            } else {
                memcpy(dst, src, sizeof(float) * D);
            }
        }
    }
}

/* out (G, D) = softmax(q k^T + bias) v for G query rows sharing one key head; keys (S, D). The
   threads split the keys, each keeping its part's max, sum and weighted values per row; the parts
   merge at the end, weighed by exp(their max - the max). Masked keys (-inf) are not read.
   attend_part is thread t's part (of nt) into `parts` (T x G parts of D + 2 floats: weighted values,
   max, sum; set to max -inf, sum 0 before) with scores in w (G x S); attend_merge joins T parts. */
static void attend_part(const float *q, long G, const float *k, const float *v, const float *bias, long S, long D,
                        int t, int nt, float *parts, float *w) {
    const long part = D + 2, s0 = S * t / nt, n = S * (t + 1) / nt - s0;
    for (long j = 0; j < G; j++) {
        float *wj = w + j * S + s0, *p = parts + ((long)t * G + j) * part, m = -INFINITY, l = 0.f;
        for (long s = 0; s < n; s++) {
            wj[s] = bias[s0 + s] == -INFINITY ? -INFINITY : dot_row(q + j * D, k + (s0 + s) * D, D) + bias[s0 + s];
            m = fmaxf(m, wj[s]);
        }
        if (m == -INFINITY) continue;  /* every key of this part masked */
        l = exp_scores(wj, n, m);
        weigh_values(p, wj, v + s0 * D, n, D);
        p[D] = m, p[D + 1] = l;
    }
}

static void attend_init(float *parts, long count, long D) {
    for (long i = 0; i < count; i++) parts[i * (D + 2) + D] = -INFINITY, parts[i * (D + 2) + D + 1] = 0.f;
}

static void attend_merge(const float *parts, int T, long G, long D, float *out) {
    const long part = D + 2;
    for (long j = 0; j < G; j++) {
        float m = -INFINITY, l = 0.f, *o = out + j * D;
        for (int t = 0; t < T; t++) m = fmaxf(m, parts[((long)t * G + j) * part + D]);
        for (long d = 0; d < D; d++) o[d] = 0.f;
        for (int t = 0; t < T; t++) {
            const float *p = parts + ((long)t * G + j) * part;
            if (p[D] == -INFINITY) continue;
            const float c = expf(p[D] - m);
            l += p[D + 1] * c;
            for (long d = 0; d < D; d++) o[d] += c * p[d];
        }
        for (long d = 0; d < D; d++) o[d] /= l;
    }
}

/* attend_part and attend_merge for one group, in a parallel region of its own. `buf`: the caller's
   scratch (kept from token to token). */
static void attend_group(const float *q, long G, const float *k, const float *v, const float *bias, long S, long D,
                         float *out, Scratch *buf) {
    const int T = omp_get_max_threads();
    float *parts = scratch(buf, sizeof(float) * (T * G * (D + 2) + S * G)), *w = parts + T * G * (D + 2);
    attend_init(parts, T * G, D);
    #pragma omp parallel num_threads(T)
    attend_part(q, G, k, v, bias, S, D, omp_get_thread_num(), omp_get_num_threads(), parts, w);
    attend_merge(parts, T, G, D, out);
}

/* The rest of a layer for M rows once attention has given `att` (M, heads x head_dim): the output
   projection, the post-attention norm into the residual x, the MLP and its post-norm; o, h, gu, act
   the caller's scratch ((M, hidden) twice, (M, 2 inter), (M, inter)). */
static void attention_out_and_mlp(const Layer *L, float *x, long M, const float *att, float *o, float *h, float *gu,
                                  float *act) {
    const long E = L->hidden, I = L->inter;
    linear_rows(&L->o, att, M, o);
    norm_rows(o, M, E, L->post_attn_norm, L->eps, x, x);
    norm_rows(x, M, E, L->mlp_norm, L->eps, NULL, h);
    linear_rows(&L->gate_up, h, M, gu);
    geglu(gu, M, I, act);
    linear_rows(&L->down, act, M, o);
    norm_rows(o, M, E, L->post_mlp_norm, L->eps, x, x);
}

/* M decoded rows through one layer, each as one decoded token is computed: a speculative check's
   token and drafts (one sequence), or one token of each of M sequences (a batch of streams). The
   projections read each weight once for all M rows, and their products are row for row the one-row
   products (int8_linear and int4_linear sum every row as they sum one); norms, RoPE and attention
   are the step's own, row by row in order: row r writes its key and value to slot slots[r] of its
   caches (k_caches[r], v_caches[r], planes of planes[r] floats) and attends their first keys[r]
   slots with the mask row bias + r * bias_stride, so rows of one sequence see the rows before them
   and nothing after. Each row's output equals the step's, bit for bit: a check's greedy tokens are
   plain decoding's, and a batched stream's tokens its own. */
void gemma3_layer_rows(const Layer *L, float *x, long M, const float *cos, const float *sin, float *const *k_caches,
                       float *const *v_caches, const long *planes, const long *slots, const long *keys,
                       const float *bias, long bias_stride) {
    static _Thread_local Scratch rows, attention;
    const long H = L->heads, Hkv = L->kv_heads, D = L->head_dim, E = L->hidden, I = L->inter, W = (H + 2 * Hkv) * D;
    float *h = scratch(&rows, sizeof(float) * (M * (2 * E + W + H * D + 3 * I) + D));
    float *qkv = h + M * E, *att = qkv + M * W, *o = att + M * H * D, *gu = o + M * E, *act = gu + M * 2 * I,
          *tmp = act + M * I;

    norm_rows(x, M, E, L->attn_norm, L->eps, NULL, h);
    linear_rows(&L->qkv, h, M, qkv);
    int own_caches = 1;  /* every row its own sequence's caches: a batch of streams, or one row */
    for (long r = 0; r < M; r++)
        for (long r2 = 0; r2 < r; r2++) own_caches &= k_caches[r] != k_caches[r2];
    for (long r = 0; r < M; r++) {
        float *qr = qkv + r * W, *kc = k_caches[r], *vc = v_caches[r];
        for (long i = 0; i < H + Hkv; i++) {
            rms_norm(qr + i * D, qr + i * D, L->qk_norm + i * D, D, L->head_eps, NULL);
            rope(qr + i * D, cos + r * D, sin + r * D, D, tmp);
        }
        for (long g = 0; g < Hkv; g++) {
            memcpy(kc + g * planes[r] + slots[r] * D, qr + (H + g) * D, sizeof(float) * D);
            memcpy(vc + g * planes[r] + slots[r] * D, qr + (H + Hkv + g) * D, sizeof(float) * D);
        }
        if (!own_caches)  /* rows of one sequence: row r attends before row r + 1 writes (a ring's slot) */
            for (long g = 0; g < Hkv; g++)
                attend_group(qr + g * (H / Hkv) * D, H / Hkv, kc + g * planes[r], vc + g * planes[r],
                             bias + r * bias_stride, keys[r], D, att + r * H * D + g * (H / Hkv) * D, &attention);
    }
    if (own_caches) {
        /* Every row's attention in one parallel region, each thread its part of every row's keys as
           attend_group splits them (so a row's sums are its own step's): one region a layer, not one a row
           and key head (72 a step for 4 streams of Gemma 3 270M, each a fork and join of the threads). */
        const int T = omp_get_max_threads();
        const long G = H / Hkv, jobs = M * Hkv, per_job = T * G * (D + 2);
        long words = jobs * per_job;
        for (long r = 0; r < M; r++) words += Hkv * G * keys[r];
        float *parts = scratch(&attention, sizeof(float) * words), *w = parts + jobs * per_job;
        attend_init(parts, jobs * T * G, D);
        #pragma omp parallel num_threads(T)
        {
            const int t = omp_get_thread_num(), nt = omp_get_num_threads();
            float *wr = w;
            for (long r = 0; r < M; r++)
                for (long g = 0; g < Hkv; g++, wr += G * keys[r])
                    attend_part(qkv + r * W + g * G * D, G, k_caches[r] + g * planes[r], v_caches[r] + g * planes[r],
                                bias + r * bias_stride, keys[r], D, t, nt, parts + (r * Hkv + g) * per_job, wr);
        }
        for (long r = 0; r < M; r++)
            for (long g = 0; g < Hkv; g++)
                attend_merge(parts + (r * Hkv + g) * per_job, T, G, D, att + r * H * D + g * G * D);
    }
    attention_out_and_mlp(L, x, M, att, o, h, gu, act);
    scratch_trim(&rows);
}

/* One decoded token of each of M sequences through L layers in one call: layer i is `gemma3_layer_rows`
   with layers[i], its RoPE tables cos[i] and sin[i], the rows' caches, planes, slots and keys at i * M..
   of theirs, and its mask bias[i] (rows bias_stride[i] apart). A batch of streams then costs one call
   from Python a step, not one a layer (~18 x 0.1-0.2 ms of argument building, Gemma 3 270M). */
void gemma3_stack_rows(const Layer *const *layers, long L, float *x, long M, const float *const *cos,
                       const float *const *sin, float *const *k_caches, float *const *v_caches, const long *planes,
                       const long *slots, const long *keys, const float *const *bias, const long *bias_stride) {
    for (long i = 0; i < L; i++)
        gemma3_layer_rows(layers[i], x, M, cos[i], sin[i], k_caches + i * M, v_caches + i * M, planes + i * M,
                          slots + i * M, keys + i * M, bias[i], bias_stride[i]);
}

/* One decoded token: x (hidden) updated in place, its key and value to slot `slot` of the caches
   (kv_heads planes of `plane` floats each), attention over their first `keys` slots with the mask
   `bias` (keys); cos and sin: this position's RoPE tables (D). One row of `gemma3_layer_rows`, so a
   check's or a batch's rows are this step by construction. A decoded token allocates nothing. */
void gemma3_layer_step(const Layer *L, float *x, const float *cos, const float *sin, float *k_cache, float *v_cache,
                       long plane, long slot, long keys, const float *bias) {
    gemma3_layer_rows(L, x, 1, cos, sin, &k_cache, &v_cache, &plane, &slot, &keys, bias, 0);
}

/* ---- a prompt's attention: the keys laid out for the source's tiles (attend_tile) ---------------- */

/* Keys (S, D) -> blocks of KCOLS keys, each (D, KCOLS): a score tile reads one row of it per d.
   Missing keys of the last block are zeros (and masked). */
static void key_blocks(const float *k, long S, long D, float *kt) {
    #pragma omp parallel for schedule(static)
    for (long b = 0; b < (S + KCOLS - 1) / KCOLS; b++)
        for (long j = 0; j < KCOLS; j++)
            for (long d = 0; d < D; d++)
                kt[(b * D + d) * KCOLS + j] = b * KCOLS + j < S ? k[(b * KCOLS + j) * D + d] : 0.f;
}

/* out (T, H, D) = softmax(q k^T * scale, masked) v for q (H, T, D) and keys, values (Hkv, S, D), the
   key heads `kv_stride` floats apart, at positions qp (T) and kp (S, -1: an empty slot). D a multiple of the
   source's value tile (16 floats AVX2, 32 AVX-512). */
void attend_rows(const float *q, long H, long T, const float *k, const float *v, long Hkv, long S, long D,
                 long kv_stride, const long *qp, const long *kp, long window, float scale, float *out) {
    static _Thread_local Scratch keys;
    const long blocks = (S + KCOLS - 1) / KCOLS;
    float *kt = scratch(&keys, sizeof(float) * Hkv * blocks * KCOLS * D + sizeof(int32_t) * blocks * KCOLS);
    int32_t *kp32 = (int32_t *)(kt + Hkv * blocks * KCOLS * D);
    for (long s = 0; s < blocks * KCOLS; s++) kp32[s] = s >= S || kp[s] < 0 ? -1 : (int32_t)kp[s];
    for (long g = 0; g < Hkv; g++) key_blocks(k + g * kv_stride, S, D, kt + g * blocks * KCOLS * D);
    const long tiles = (T + QROWS - 1) / QROWS;
    #pragma omp parallel for schedule(dynamic, 1)
    for (long job = 0; job < H * tiles; job++) {
        const long h = job / tiles, t0 = (tiles - 1 - job % tiles) * QROWS;  /* the longest rows first */
        const long g = h / (H / Hkv);
        const int rows = T - t0 < QROWS ? (int)(T - t0) : QROWS;
        attend_tile(q + (h * T + t0) * D, rows, qp + t0, kt + g * blocks * KCOLS * D, v + g * kv_stride, kp32, S, D,
                    window, scale, out + (t0 * H + h) * D, H * D);
    }
    scratch_trim(&keys);
}

/* ---- a prompt's rows through one Gemma 3 layer, in two calls --------------------------------
   The same computation as gemma3.Block for M rows of one sequence, every projection a product of
   ours: gemma3_prompt_qkv gives q, k and v by head; the caller puts k and v in its KV cache (a ring
   or a full cache, kept in Python) and hands back the keys to attend; gemma3_prompt_rest does the
   rest, updating x (M, hidden) in place. Two calls a layer instead of ~15 from Python. Their
   temporaries: one scratch per calling thread, kept from call to call (see `scratch`). */
static _Thread_local Scratch prompt;

void gemma3_prompt_qkv(const Layer *L, const float *x, long M, const float *cos, const float *sin, float *q,
                       float *k, float *v) {
    const long E = L->hidden, H = L->heads, Hkv = L->kv_heads, D = L->head_dim;
    float *h = scratch(&prompt, sizeof(float) * (M * E + M * (H + 2 * Hkv) * D)), *qkv = h + M * E;
    norm_rows(x, M, E, L->attn_norm, L->eps, NULL, h);
    linear_rows(&L->qkv, h, M, qkv);
    qkv_heads(qkv, M, H, Hkv, D, L->qk_norm, L->head_eps, cos, sin, q, k, v);
}

void gemma3_prompt_rest(const Layer *L, float *x, long M, const float *q, const float *k, const float *v, long S,
                        long kv_stride, const long *qp, const long *kp, long window) {
    const long E = L->hidden, H = L->heads, D = L->head_dim, I = L->inter;
    float *att = scratch(&prompt, sizeof(float) * M * (H * D + 2 * E + 3 * I)), *o = att + M * H * D, *h = o + M * E,
          *gu = h + M * E, *act = gu + M * 2 * I;
    attend_rows(q, H, M, k, v, L->kv_heads, S, D, kv_stride, qp, kp, window, 1.f, att);  /* scale: in q's gain */
    attention_out_and_mlp(L, x, M, att, o, h, gu, act);
    scratch_trim(&prompt);
}
#endif
