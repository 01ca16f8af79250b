import { useState, type FormEvent } from "react";
import { ProblemBox } from "../components/Problem";
import { useAuth } from "../lib/auth";
import { apiProblem, type Problem } from "../session/messages";

export function SignIn() {
  const { signIn, state } = useAuth();
  const [token, setToken] = useState("");
  const [busy, setBusy] = useState(false);
  const [problem, setProblem] = useState<Problem | null>(null);
  const expired = state.status === "signed-out" && state.expired;
  const note = state.status === "signed-out" ? state.problem : undefined;

  async function submit(event: FormEvent) {
    event.preventDefault();
    if (!token.trim()) return;
    setBusy(true);
    setProblem(null);
    try {
      await signIn(token);
    } catch (error) {
      setProblem(apiProblem(error, "Signing in failed"));
      setBusy(false);
    }
  }

  return (
    <main className="signin" id="main">
      <form className="card signin-card" onSubmit={submit} aria-labelledby="signin-title">
        <h1 id="signin-title">Sign in to voicepool</h1>
        {expired ? <p className="note">Your sign-in ended. Sign in again to go on.</p> : null}
        {note ? <p className="note">{note}</p> : null}
        <label htmlFor="token">Access token</label>
        <input
          id="token"
          name="token"
          type="password"
          autoComplete="current-password"
          spellCheck={false}
          placeholder="vp_…"
          value={token}
          onChange={(e) => setToken(e.target.value)}
          required
          autoFocus
        />
        <p className="hint">
          An administrator creates tokens with <code>voicepool users create NAME</code>; <code>make dev</code> prints
          one for the local <code>dev</code> user.
        </p>
        {problem ? <ProblemBox problem={problem} /> : null}
        <button type="submit" className="button-primary" disabled={busy || !token.trim()}>
          {busy ? "Signing in…" : "Sign in"}
        </button>
      </form>
    </main>
  );
}
