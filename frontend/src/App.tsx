import { useEffect } from "react";
import { Link, NavLink, Route, Routes, useLocation } from "react-router";
import { useAuth } from "./lib/auth";
import { ConfigProvider } from "./lib/config";
import { Conversation } from "./pages/Conversation";
import { History } from "./pages/History";
import { Operators } from "./pages/Operators";
import { SignIn } from "./pages/SignIn";
import { Talk } from "./pages/Talk";
import { useVoiceSession, VoiceSessionProvider } from "./session/VoiceSession";

export function App() {
  const { state } = useAuth();
  if (state.status === "loading") {
    return (
      <main className="splash" aria-busy="true">
        <p className="muted">Loading…</p>
      </main>
    );
  }
  if (state.status === "signed-out") return <SignIn />;
  return (
    <ConfigProvider>
      <VoiceSessionProvider>
        <SignedIn />
      </VoiceSessionProvider>
    </ConfigProvider>
  );
}

function SignedIn() {
  const { user, signOut, setBeforeSignOut } = useAuth();
  const voice = useVoiceSession();
  const location = useLocation();
  const inCall = voice.phase === "live" || voice.phase === "stopping";

  useEffect(() => {
    setBeforeSignOut(() => voice.stop());
    return () => setBeforeSignOut(null);
  }, [setBeforeSignOut, voice.stop]);

  return (
    <>
      <a className="skip" href="#main">
        Skip to content
      </a>
      <header className="topbar">
        <Link to="/" className="brand" aria-label="voicepool, Talk">
          <span className="brand-mark" aria-hidden="true" />
          <span className="brand-text">voicepool</span>
        </Link>
        <nav aria-label="Main">
          <NavLink to="/" end>
            Talk
          </NavLink>
          <NavLink to="/history">History</NavLink>
          {user?.role === "admin" ? <NavLink to="/operators">Operators</NavLink> : null}
        </nav>
        {inCall && location.pathname !== "/" ? (
          <Link to="/" className="in-call" data-testid="in-call">
            ● In a call
          </Link>
        ) : null}
        <div className="who-am-i">
          <span className="user-name" data-testid="user-name">
            {user?.name}
            {user?.role === "admin" ? <span className="tag">admin</span> : null}
          </span>
          <button type="button" className="button-quiet" onClick={() => void signOut()} data-testid="sign-out">
            Sign out
          </button>
        </div>
      </header>
      <Routes>
        <Route path="/" element={<Talk />} />
        <Route path="/talk" element={<Talk />} />
        <Route path="/history" element={<History />} />
        <Route path="/history/:id" element={<Conversation />} />
        <Route path="/operators" element={<Operators />} />
        <Route path="*" element={<NotFound />} />
      </Routes>
    </>
  );
}

function NotFound() {
  return (
    <main id="main" className="page">
      <h1>Page not found</h1>
      <p>
        <Link to="/">Go to Talk</Link>
      </p>
    </main>
  );
}
