/* One decoded token through one Gemma 3n layer, in one call: the same computation as gemma3n.Block for
   one row (B = T = 1), float32 activations, every projection one of our products (int8, or 4-bit read
   in torch's own layout). In Python the layer is ~80 small torch ops (AltUp's predict and correct,
   LAuReL, ten norms, the sparsity gate, the per-layer-input gate), each a few us of dispatch around
   little arithmetic: on a 2-core AMD EPYC Zen 3 they cost as much as the layer's weights take to
   stream. decoder/gemma3n_fast.py mirrors the struct and makes the call. Each source defines its
   vector helpers (rms_norm, dot_row, geglu) and includes gemma3_layer.h (attend_group, linear_rows)
   before this. */
#ifndef MMSDK_GEMMA3N_STEP_H
#define MMSDK_GEMMA3N_STEP_H
#include "kernels.h"
#include "gemma3_layer.h"

#define ALTUP_MAX 8  /* streams the step takes (Gemma 3n has 4) */

/* One Gemma 3n layer (decoder/gemma3n_fast.py's `_Gemma3nLayer`). */
typedef struct {
    long hidden, heads, kv_heads, head_dim, inter, ple_dim, streams, own_kv;
    float eps, head_eps;  /* sqrt(width * eps) of the hidden-size norms and of the per-head ones */
    float router_scale, std_multiplier;  /* 1 / hidden; the sparsity gate's (0: a dense MLP) */
    /* gains: AltUp's router norm, before attention, q, k, v (sqrt(D): no scale), LAuReL's, after attention,
       before and after the MLP, after the per-layer input's projection; the corrected stream's scale (or NULL) */
    const float *router_norm, *attn_norm, *q_norm, *k_norm, *v_norm, *laurel_norm, *post_attn_norm, *mlp_norm,
        *post_mlp_norm, *ple_norm, *correct_scale;
    const float *router, *prediction, *correction;  /* AltUp's float maps: (K, hidden), (K K, K), (K, K) */
    Linear q, k, v, o, gate, up, down, laurel_left, laurel_right, ple_gate, ple_proj;
} G3nLayer;

long sizeof_gemma3n_layer(void) { return sizeof(G3nLayer); }

static float dot_small(const float *a, const float *b, long n) {  /* AltUp's K-wide products */
    float acc = 0.f;
    for (long i = 0; i < n; i++) acc += a[i] * b[i];
    return acc;
}

/* AltUp's router: tanh(W (norm(x) / hidden)), K numbers; `tmp` (hidden) scratch. */
static void altup_route(const G3nLayer *L, const float *x, float *tmp, float *r) {
    const long E = L->hidden;
    rms_norm(tmp, x, L->router_norm, E, L->eps, NULL);
    for (long j = 0; j < L->streams; j++) r[j] = tanhf(L->router_scale * dot_row(L->router + j * E, tmp, E));
}

/* gate <- relu(gate - (mean + std_multiplier * std)): the first layers' Gaussian top-k (std over all I) */
static void sparsity_gate(float *gate, long I, float multiplier) {
    double sum = 0., sq = 0.;
    for (long i = 0; i < I; i++) sum += gate[i];
    const double mean = sum / I;
    for (long i = 0; i < I; i++) sq += (gate[i] - mean) * (gate[i] - mean);
    const float cutoff = (float)(mean + sqrt(sq / I) * multiplier);
    for (long i = 0; i < I; i++) gate[i] = fmaxf(gate[i] - cutoff, 0.f);
}

/* Each of `heads` rows of D (a token's query or key heads) normed by `gain`, then rotated by RoPE. */
static void norm_rope_heads(float *x, long heads, long D, const float *gain, float eps, const float *cos,
                            const float *sin, float *rot) {
    for (long i = 0; i < heads; i++) {
        rms_norm(x + i * D, x + i * D, gain, D, eps, NULL);
        rope(x + i * D, cos, sin, D, rot);
    }
}

/* A token's keys (already normed and rotated) and values (normed here) into slot `slot` of the caches:
   Hkv planes of `plane` floats each. */
static void store_kv(const float *k, float *v, long Hkv, long D, const float *v_norm, float eps, float *k_cache,
                     float *v_cache, long plane, long slot) {
    for (long i = 0; i < Hkv; i++) {
        rms_norm(v + i * D, v + i * D, v_norm, D, eps, NULL);
        memcpy(k_cache + i * plane + slot * D, k + i * D, sizeof(float) * D);
        memcpy(v_cache + i * plane + slot * D, v + i * D, sizeof(float) * D);
    }
}

/* att (H, D): each group of H / Hkv query heads over its key head's first `keys` cache slots. */
static void attend_heads(const float *q, long H, long Hkv, long D, const float *k_cache, const float *v_cache,
                         long plane, const float *bias, long keys, float *att, Scratch *s) {
    for (long i = 0; i < Hkv; i++)
        attend_group(q + i * (H / Hkv) * D, H / Hkv, k_cache + i * plane, v_cache + i * plane, bias, keys, D,
                     att + i * (H / Hkv) * D, s);
}

/* streams s (K, hidden) updated in place; ple_in: this layer's per-layer input (ple_dim). With own_kv
   the key and value go to slot `slot` of the caches (kv_heads planes of `plane` floats each); attention
   reads their first `keys` slots (a KV-shared layer: its source's caches) with the mask `bias` (keys).
   cos and sin: this position's RoPE tables (head_dim). A decoded token allocates nothing. */
void gemma3n_layer_step(const G3nLayer *L, float *s, const float *ple_in, const float *cos, const float *sin,
                        float *k_cache, float *v_cache, long plane, long slot, long keys, const float *bias) {
    static _Thread_local Scratch buf, attention;
    const long K = L->streams, E = L->hidden, H = L->heads, Hkv = L->kv_heads, D = L->head_dim, I = L->inter,
               P = L->ple_dim, R = L->laurel_left.out;
    float *pred = scratch(&buf, sizeof(float) * (K * E + 5 * E + 2 * H * D + 2 * Hkv * D + R + 3 * I + 3 * P + D));
    float *h = pred + K * E, *o = h + E, *x = o + E, *lr = x + E, *tmp = lr + E, *q = tmp + E, *att = q + H * D,
          *kv = att + H * D, *low = kv + 2 * Hkv * D, *gu = low + R, *act = gu + 2 * I, *g = act + I, *gact = g + 2 * P,
          *rot = gact + P;
    float r[ALTUP_MAX], c[ALTUP_MAX * ALTUP_MAX];

    /* AltUp predict: stream j = itself + sum_i c[j, i] stream i, c from the active stream (0) */
    altup_route(L, s, tmp, r);
    for (long j = 0; j < K * K; j++) c[j] = dot_small(L->prediction + j * K, r, K);
    for (long j = 0; j < K; j++)
        for (long e = 0; e < E; e++) {
            float acc = s[j * E + e];
            for (long i = 0; i < K; i++) acc += c[j * K + i] * s[i * E + e];
            pred[j * E + e] = acc;
        }

    /* attention: q (and, with own_kv, k and v) per head normed, q and k rotated; scale 1 (q_norm does it) */
    rms_norm(h, pred, L->attn_norm, E, L->eps, NULL);
    linear_rows(&L->q, h, 1, q);
    norm_rope_heads(q, H, D, L->q_norm, L->head_eps, cos, sin, rot);
    if (L->own_kv) {
        float *k = kv, *v = kv + Hkv * D;
        linear_rows(&L->k, h, 1, k);
        linear_rows(&L->v, h, 1, v);
        norm_rope_heads(k, Hkv, D, L->k_norm, L->head_eps, cos, sin, rot);
        store_kv(k, v, Hkv, D, L->v_norm, L->head_eps, k_cache, v_cache, plane, slot);
    }
    attend_heads(q, H, Hkv, D, k_cache, v_cache, plane, bias, keys, att, &attention);
    linear_rows(&L->o, att, 1, o);

    /* x = (active + post_attn_norm(attention) + laurel(h)) / sqrt 2, laurel(h) = h + norm(right(left(h))) */
    linear_rows(&L->laurel_left, h, 1, low);
    linear_rows(&L->laurel_right, low, 1, lr);
    rms_norm(lr, lr, L->laurel_norm, E, L->eps, h);
    rms_norm(o, o, L->post_attn_norm, E, L->eps, pred);
    for (long e = 0; e < E; e++) x[e] = (o[e] + lr[e]) / sqrtf(2.f);

    /* MLP: GeGLU, the gate sparsified in the first layers; its post-norm added to x */
    rms_norm(h, x, L->mlp_norm, E, L->eps, NULL);
    linear_rows(&L->gate, h, 1, gu);
    linear_rows(&L->up, h, 1, gu + I);
    if (L->std_multiplier != 0.f) sparsity_gate(gu, I, L->std_multiplier);
    geglu(gu, 1, I, act);
    linear_rows(&L->down, act, 1, o);
    rms_norm(x, o, L->post_mlp_norm, E, L->eps, x);

    /* AltUp correct: stream j = prediction j + (c_j + 1) (x - prediction 0) */
    altup_route(L, x, tmp, r);
    for (long j = 0; j < K; j++) c[j] = dot_small(L->correction + j * K, r, K) + 1.f;
    for (long j = 0; j < K; j++)
        for (long e = 0; e < E; e++) s[j * E + e] = pred[j * E + e] + c[j] * (x[e] - pred[e]);

    /* the per-layer input, gated by the (scaled) corrected active stream, added to the other streams */
    if (L->correct_scale)
        for (long e = 0; e < E; e++) tmp[e] = s[e] * L->correct_scale[e];
    else
        memcpy(tmp, s, sizeof(float) * E);
    linear_rows(&L->ple_gate, tmp, 1, g);
    memcpy(g + P, ple_in, sizeof(float) * P);
    geglu(g, 1, P, gact);
    linear_rows(&L->ple_proj, gact, 1, o);
    rms_norm(o, o, L->ple_norm, E, L->eps, NULL);
    for (long j = 1; j < K; j++)
        for (long e = 0; e < E; e++) s[j * E + e] += o[e];
}
#endif
