// htm bound to Preact's h: components written as tagged templates, no compiler.
import { h } from "preact";
import htm from "htm";
import { useEffect, useState } from "preact/hooks";

export const html = htm.bind(h);

// Run an async loader when `deps` change: { data, error, loading }.
export function useLoad(load, deps) {
  const [state, setState] = useState({ data: null, error: null, loading: true });
  useEffect(() => {
    let live = true;
    setState((s) => ({ ...s, loading: true }));
    load().then(
      (data) => live && setState({ data, error: null, loading: false }),
      (error) => live && setState({ data: null, error, loading: false }),
    );
    return () => { live = false; };
  }, deps);
  return state;
}

export function Failure({ error }) {
  if (!error) return null;
  const auth = error.status === 401 || error.status === 403;
  return html`<div class="error" data-testid="error">${error.message}${auth
    ? html`<br/>Enter the operator token (RANKTUNE_API_TOKEN) at the top right to see this page.` : null}</div>`;
}
