// A small, dependency-free reading of the JSON schemas in this folder as TypeScript types, enough
// to check the hand-written wire types against them at compile time (see `Matches` below). The
// hand-written types stay because they say more than the schemas can: the attach request's
// source is a discriminated union on `type`, while its schema is one object whose fields the
// storage parser checks per type. The check makes a field added to one and not the other a
// type error.

type Primitive<T> = T extends 'string'
  ? string
  : T extends 'number' | 'integer'
    ? number
    : T extends 'boolean'
      ? boolean
      : T extends 'null'
        ? null
        : T extends 'object'
          ? Record<string, unknown>
          : T extends 'array'
            ? unknown[]
            : never;

type Nullable<S> = S extends { type: readonly (infer T)[] } ? ('null' extends T ? null : never) : never;
type Required<S> = S extends { required: readonly (infer R)[] } ? R : never;
type ObjectOf<P, R> = { [K in keyof P as K extends R ? K : never]: FromSchema<P[K]> } & {
  [K in keyof P as K extends R ? never : K]?: FromSchema<P[K]>;
};

type Base<S> = S extends { enum: readonly (infer E)[] }
  ? E
  : S extends { properties: infer P }
    ? ObjectOf<P, Required<S>>
    : S extends { additionalProperties: infer A extends object }
      ? Record<string, FromSchema<A>>
      : S extends { items: infer I }
        ? FromSchema<I>[]
        : S extends { type: readonly (infer T)[] }
          ? Primitive<Exclude<T, 'null'>>
          : S extends { type: infer T }
            ? Primitive<T>
            : unknown; // a $ref: checked where the referenced schema is

/** The values a JSON schema (`as const`) admits, as a type. */
export type FromSchema<S> = Base<S> | Nullable<S>;

type KeysOf<T> = T extends unknown ? keyof T : never;
type PropertyKeys<S> = S extends { properties: infer P } ? keyof P : never;

/**
 * True when every value of the hand-written type `T` is valid under schema `S` and `T` spells
 * exactly the schema's properties (over all members of a union); else a type naming what differs.
 */
export type Matches<T, S> = [T] extends [FromSchema<S>]
  ? [Exclude<KeysOf<T>, PropertyKeys<S>>, Exclude<PropertyKeys<S>, KeysOf<T>>] extends [never, never]
    ? true
    : { onlyInType: Exclude<KeysOf<T>, PropertyKeys<S>>; onlyInSchema: Exclude<PropertyKeys<S>, KeysOf<T>> }
  : { notValidUnderSchema: T };

/** Compiles only when `T` is `true`. */
export type Assert<T extends true> = T;
