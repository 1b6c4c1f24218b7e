/* One decoded token through one Gemma 4 layer, in one call: the same computation as gemma4.Block for one
   row (B = T = 1), float32 activations, every projection one of our products (int8, or 4-bit read in torch's
   own layout). In Python the layer is ~40 small torch ops (eight norms, RoPE, the per-layer-input gate, the
   output scale), each a few us of dispatch around little arithmetic. decoder/gemma4_fast.py mirrors the struct
   and makes the call. Each source defines its vector helpers (rms_norm, geglu) and includes gemma3_layer.h
   (attend_group, linear_rows) before this. */
#ifndef MMSDK_GEMMA4_STEP_H
#define MMSDK_GEMMA4_STEP_H
#include "kernels.h"
#include "gemma3_layer.h"
#include "gemma3n_step.h"  /* the heads' norm, RoPE, cache writes and attention */

/* One Gemma 4 layer (decoder/gemma4_fast.py's `_Gemma4Layer`). */
typedef struct {
    long hidden, heads, kv_heads, head_dim, inter, ple_dim, own_kv, values_are_keys;
    float eps, head_eps;  /* sqrt(width * eps) of the hidden-size norms and of the per-head ones */
    float layer_scalar;  /* the layer's output scale */
    /* gains: before attention, q, k, v (all 1: no scale), after attention, before and after the MLP, after the
       per-layer input's projection (NULL without per-layer inputs) */
    const float *attn_norm, *q_norm, *k_norm, *v_norm, *post_attn_norm, *mlp_norm, *post_mlp_norm, *ple_norm;
    Linear q, k, v, o, gate, up, down, ple_gate, ple_proj;  /* v: unused where values are the keys */
} G4Layer;

long sizeof_gemma4_layer(void) { return sizeof(G4Layer); }

/* x (hidden) updated in place; ple_in: this layer's per-layer input (ple_dim), or NULL. With own_kv the key and
   value go to slot `slot` of the caches (kv_heads planes of `plane` floats each); attention reads their first
   `keys` slots (a KV-shared layer: its source's caches) with the mask `bias` (keys). cos and sin: this
   position's RoPE tables (head_dim; proportional RoPE's unturned dims have cos 1, sin 0). */
void gemma4_layer_step(const G4Layer *L, float *x, const float *ple_in, const float *cos, const float *sin,
                       float *k_cache, float *v_cache, long plane, long slot, long keys, const float *bias) {
    static _Thread_local Scratch buf, attention;
    const long E = L->hidden, H = L->heads, Hkv = L->kv_heads, D = L->head_dim, I = L->inter, P = L->ple_dim;
    float *h = scratch(&buf, sizeof(float) * (2 * E + 2 * H * D + 2 * Hkv * D + 3 * I + 3 * P + D));
    float *o = h + E, *q = o + E, *att = q + H * D, *kv = att + H * D, *gu = kv + 2 * Hkv * D, *act = gu + 2 * I,
          *g = act + I, *gact = g + 2 * P, *rot = gact + P;

    /* attention: q (and, with own_kv, k and v) per head normed, q and k rotated; scale 1 (q_norm does it) */
    rms_norm(h, x, L->attn_norm, E, L->eps, NULL);
    linear_rows(&L->q, h, 1, q);
    norm_rope_heads(q, H, D, L->q_norm, L->head_eps, cos, sin, rot);
    if (L->own_kv) {
        float *k = kv, *v = kv + Hkv * D;
        linear_rows(&L->k, h, 1, k);
        if (L->values_are_keys)
            memcpy(v, k, sizeof(float) * Hkv * D);  /* the key projection, before its norm and rotation */
        else
            linear_rows(&L->v, h, 1, v);
        norm_rope_heads(k, Hkv, D, L->k_norm, L->head_eps, cos, sin, rot);
        store_kv(k, v, Hkv, D, L->v_norm, L->head_eps, k_cache, v_cache, plane, slot);
    }
    attend_heads(q, H, Hkv, D, k_cache, v_cache, plane, bias, keys, att, &attention);
    linear_rows(&L->o, att, 1, o);
    rms_norm(x, o, L->post_attn_norm, E, L->eps, x);

    /* MLP: GeGLU; its post-norm added to x */
    rms_norm(h, x, L->mlp_norm, E, L->eps, NULL);
    linear_rows(&L->gate, h, 1, gu);
    linear_rows(&L->up, h, 1, gu + I);
    geglu(gu, 1, I, act);
    linear_rows(&L->down, act, 1, o);
    rms_norm(x, o, L->post_mlp_norm, E, L->eps, x);

    /* the per-layer input, gated by the stream it joins */
    if (ple_in) {
        linear_rows(&L->ple_gate, x, 1, g);
        memcpy(g + P, ple_in, sizeof(float) * P);
        geglu(g, 1, P, gact);
        linear_rows(&L->ple_proj, gact, 1, o);
        rms_norm(x, o, L->ple_norm, E, L->eps, x);
    }
    for (long e = 0; e < E; e++) x[e] *= L->layer_scalar;
}
#endif
