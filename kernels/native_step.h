/* A kernel call with its arguments resolved at bind time: plan.PlanRunner runs consecutive native
 * steps in one GIL-free loop (no Python between nodes). A step object exposes one of these
 * through a capsule named EMBER_NATIVE_CAPSULE in its `_native` attribute; `fn(state)` returns
 * 0, or an error code the object's `raise_for(code)` turns into the exception. */
#ifndef EMBER_NATIVE_STEP_H
#define EMBER_NATIVE_STEP_H

typedef int (*ember_native_fn)(void *state);

typedef struct {
    ember_native_fn fn;
    void *state;
} ember_native_step;

#define EMBER_NATIVE_CAPSULE "ember.native_step"

#endif
